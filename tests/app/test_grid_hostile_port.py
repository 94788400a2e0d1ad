"""A grid command against a port where another program answers: what it says reaches
the operator's terminal as one line of text, never as control sequences."""
from __future__ import annotations

import os
import socket
import threading

from app.cli import main
from rpc.wire import REFUSED, encode_frame

SEQUENCE = "\x1b]0;owned\x07\x1b[2J\rfake line\nsecond line"


def refusing_port():
    """A listener that refuses every handshake with a reason full of escape sequences."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.settimeout(1.0)
                    conn.recv(4096)
                    conn.sendall(encode_frame(REFUSED, SEQUENCE))
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return srv, stop


def test_a_refusal_full_of_escape_sequences_is_printed_as_plain_text(tmp_path, capsys):
    secret = tmp_path / "client.secret"
    secret.write_bytes(os.urandom(32).hex().encode())
    secret.chmod(0o600)
    srv, stop = refusing_port()
    try:
        address = "127.0.0.1:%d" % srv.getsockname()[1]
        assert main(["show", "--cluster", address, "--secret-file", str(secret), "--timeout", "1"]) == 1
    finally:
        stop.set()
        srv.close()
    err = capsys.readouterr().err
    assert "fake line" in err and err.count("\n") == 1, err
    assert not any(ch in err for ch in "\x1b\x07\r"), repr(err)
