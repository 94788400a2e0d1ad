"""Ctrl-C on a grid command that waits (for a master, a slow node): one line and exit
code 130, as a shell expects, never a KeyboardInterrupt traceback."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_while_waiting_for_a_master_is_one_line(tmp_path):
    secret = tmp_path / "client.secret"
    secret.write_bytes(os.urandom(32).hex().encode())
    secret.chmod(0o600)
    hole = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) and never answers
    try:
        address = "127.0.0.1:%d" % hole.getsockname()[1]
        p = subprocess.Popen([sys.executable, "-m", "app", "show", "--cluster", address, "--secret-file", str(secret),
                              "--timeout", "60"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": ROOT})
        time.sleep(4)  # imports done, waiting for an answer
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
    finally:
        hole.close()
    text = err.decode()
    assert p.returncode == 130, text
    assert "Traceback" not in text and text.count("\n") == 1 and "interrupted" in text, text
