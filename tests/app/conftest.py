"""Tk objects must be freed on the Tk thread (Tcl aborts the process otherwise)."""
from __future__ import annotations

import gc

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    yield
    # pytest drops a test's fixture values only after its teardown: collect what they
    # leave here, on the main thread, before another test's threads run a collection.
    if item.module.__name__.endswith("test_ui"):
        gc.collect()
        import tkinter

        alive = [o for o in gc.get_objects() if isinstance(o, tkinter.Tk)]
        assert not alive, f"{len(alive)} Tk window(s) outlived {item.nodeid}: a reference cycle keeps them"
