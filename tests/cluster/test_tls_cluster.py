"""A cluster whose peer and client traffic runs over TLS, configured in the node files."""
from __future__ import annotations

import datetime
import ipaddress
import sys

import pytest

from tests.cluster.harness import LocalCluster
from tests.prevalence.domain import Stamp

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")]


def self_signed(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prevalence-cluster")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    crt, pem = directory / "cluster.crt", directory / "cluster.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return str(crt), str(pem)


def test_cluster_over_tls(tmp_path):
    crt, key = self_signed(tmp_path)
    c = LocalCluster(tmp_path / "c", 3, tls_cert=crt, tls_key=key, tls_ca=crt)
    try:
        leader = c.leader()
        assert c.call(leader, "execute", Stamp("over tls"))[0] == "ok"
        assert all(r["reachable"] for r in c.status().values())
        from prevalence.errors import PrevalenceError
        from rpc.transport import open_connection

        with pytest.raises(PrevalenceError):  # a client without TLS cannot even start the handshake
            open_connection(c.configs[leader].listen, c.secret, role="client", ident="plain",
                            connect_timeout=0.5, handshake_timeout=1.0)
    finally:
        c.stop()
