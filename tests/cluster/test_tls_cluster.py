"""A cluster whose peer and client traffic runs over TLS, configured in the node files."""
from __future__ import annotations

import sys

import pytest

from tests.certs import self_signed
from tests.cluster.harness import LocalCluster
from tests.prevalence.domain import Stamp

pytest.importorskip("cryptography.x509")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")]


def test_cluster_over_tls(tmp_path):
    crt, key = (str(p) for p in self_signed(tmp_path, "cluster"))
    c = LocalCluster(tmp_path / "c", 3, tls_cert=crt, tls_key=key, tls_ca=crt)
    try:
        leader = c.leader()
        assert c.call(leader, "execute", Stamp("over tls"))[0] == "ok"
        # every node answers status over TLS (a node still starting on a loaded machine: wait for it)
        c.wait_for("every node to answer status over TLS", lambda: all(r["reachable"] for r in c.status().values()), 15)
        from prevalence.errors import PrevalenceError
        from rpc.transport import open_connection

        with pytest.raises(PrevalenceError):  # a client without TLS cannot even start the handshake
            open_connection(c.configs[leader].listen, c.secret, role="client", ident="plain",
                            connect_timeout=0.5, handshake_timeout=1.0)
    finally:
        c.stop()
