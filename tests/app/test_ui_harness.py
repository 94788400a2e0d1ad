"""The window tests' own harness: a failing window test must be reported as that failure."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses Xvfb")
HERE = os.path.dirname(os.path.abspath(__file__))

FAILING = '''
import tkinter as tk

import pytest


@pytest.fixture
def root():  # as test_ui.py's window fixture: made, then destroyed after the test
    r = tk.Tk()
    yield r
    r.destroy()


def test_window_then_a_failed_check(root):
    window = root  # still referenced by this frame when the assertion fails
    assert window is None, "the failure the operator of CI must see"
'''


def test_a_failed_window_test_is_reported_not_an_internal_error(display, tmp_path):
    """The leak check after each window test found the failed test's window still alive
    (its traceback, kept for debugging, holds it) and raised INTERNALERROR, which hid the
    test's own failure from the report."""
    with open(os.path.join(HERE, "conftest.py")) as f:
        (tmp_path / "conftest.py").write_text(f.read())
    (tmp_path / "test_ui.py").write_text(FAILING)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark",
                          str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "DISPLAY": display})
    out = run.stdout + run.stderr
    assert "INTERNALERROR" not in out, out[-2000:]
    assert run.returncode == 1 and "the failure the operator of CI must see" in out, out[-2000:]
