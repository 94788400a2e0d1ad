"""Optional TLS under the HMAC handshake, with a self-signed certificate made here."""
import ssl

import pytest

from rpc import AuthenticationFailed, ConnectFailed, open_peer_channel

from tests.certs import self_signed

from .conftest import HOST, SECRET, Inbox

pytest.importorskip("cryptography.x509")


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"), "node")


@pytest.fixture
def contexts(cert_files):
    cert, key = cert_files
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    return server, client


def test_transport_over_tls(make_server, make_transport, contexts):
    server_ctx, client_ctx = contexts
    inbox = Inbox()
    srv = make_server(inbox, ssl_context=server_ctx)
    t = make_transport("a", {"b": srv.address}, ssl_context=client_ctx)
    for i in range(2000):
        t.send("b", b"m%d" % i)
    assert inbox.wait_count(2000)
    assert inbox.payloads() == [b"m%d" % i for i in range(2000)]
    with open_peer_channel(srv.address, SECRET, ident="x", ssl_context=client_ctx) as conn:
        assert isinstance(conn.channel.stream.sock, ssl.SSLSocket)
        assert conn.call([b"tls"]) == []
        assert inbox.wait_for_payload(b"tls")


def test_plain_client_to_tls_server_fails_cleanly(make_server, contexts):
    server_ctx, _ = contexts
    srv = make_server(Inbox(), ssl_context=server_ctx, handshake_timeout=1)
    with pytest.raises((AuthenticationFailed, ConnectFailed)) as ei:
        open_peer_channel(srv.address, SECRET, ident="x", handshake_timeout=1.5)
    assert f"{HOST}:{srv.address[1]}" in str(ei.value)


def test_untrusted_server_certificate_refused(make_server, contexts):
    server_ctx, _ = contexts
    srv = make_server(Inbox(), ssl_context=server_ctx)
    strict = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # system CAs only
    with pytest.raises(AuthenticationFailed, match="TLS handshake with .* failed"):
        open_peer_channel(srv.address, SECRET, ident="x", ssl_context=strict)


def test_closing_a_tls_server_drops_its_connections(make_server, make_transport, contexts):
    from .conftest import wait_until

    server_ctx, client_ctx = contexts
    inbox = Inbox()
    srv = make_server(inbox, ssl_context=server_ctx)
    t = make_transport("a", {"b": srv.address}, ssl_context=client_ctx)
    t.send("b", b"hi")
    assert inbox.wait_for_payload(b"hi")
    srv.close()
    assert wait_until(lambda: not t.peer_status()["b"]["connected"], timeout=3)
