"""The window's tests: a virtual screen, and Tk objects freed on the Tk thread (Tcl
aborts the process otherwise)."""
from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys

import pytest

from rpc.transport import NodeLink


@pytest.fixture(scope="module")
def display():
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (.ci/run installs Debian's xvfb)")
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()
    old = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{number}"
    try:
        yield f":{number}"
    finally:
        xvfb.terminate()
        xvfb.wait(10)
        if old is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = old


@pytest.fixture
def replies(monkeypatch):
    """address -> the reply its node gives to ``status`` (an exception is raised)."""
    by_address: dict[str, object] = {}

    def call(self, method, *args):
        reply = by_address[f"{self.address[0]}:{self.address[1]}"]
        if isinstance(reply, BaseException):
            raise reply
        return reply

    monkeypatch.setattr(NodeLink, "call", call)
    return by_address


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    yield
    # pytest drops a test's fixture values only after its teardown: collect what they
    # leave here, on the main thread, before another test's threads run a collection.
    if item.module.__name__.endswith("test_ui"):
        # a failed test's traceback (kept for post-mortem debugging) holds its frames, and
        # so the window: drop it, or the check below would hide the failure it follows
        for name in ("last_type", "last_value", "last_traceback", "last_exc"):
            if hasattr(sys, name):
                setattr(sys, name, None)
        gc.collect()
        import tkinter

        alive = [o for o in gc.get_objects() if isinstance(o, tkinter.Tk)]
        assert not alive, f"{len(alive)} Tk window(s) outlived {item.nodeid}: a reference cycle keeps them"
