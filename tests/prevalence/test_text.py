"""Text from elsewhere made fit for one terminal or log line (prevalence.text)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prevalence.text import error_text, one_line, os_error_text


@given(st.text(), st.one_of(st.none(), st.integers(min_value=4, max_value=400)))
def test_one_line_is_printable_single_line_and_bounded(text, limit):
    line = one_line(text, limit)
    assert line.isprintable() and "\n" not in line and line == line.strip()
    assert limit is None or len(line) <= limit


class Hostile(Exception):
    def __str__(self):
        raise RecursionError("maximum recursion depth exceeded")


@given(st.text(), st.integers(min_value=4, max_value=400))
def test_error_text_is_never_empty_and_survives_a_message_that_cannot_be_made(message, limit):
    line = error_text(ValueError(message), limit)
    assert line and line.isprintable() and len(line) <= limit
    assert error_text(Hostile("x")) == "Hostile"
    assert error_text(KeyError()) == "KeyError"


def test_an_os_error_reads_as_the_shell_tools_say_it(tmp_path):
    missing = tmp_path / "nowhere" / "file"
    try:
        open(missing)
    except OSError as exc:
        assert os_error_text(exc) == f"{missing}: No such file or directory"
    assert os_error_text(OSError(28, "No space left on device")) == "No space left on device"
    assert os_error_text(OSError("plain words")) == "plain words"


def test_an_os_error_on_a_descriptor_reads_as_one_line():
    """os.stat(fd) and the other calls that take a descriptor name it as the error's
    filename, an int: os.fsdecode raised TypeError, and `prevalence` printed a traceback
    instead of its one line."""
    import os

    try:
        os.stat(2**30)
    except OSError as exc:
        assert exc.filename == 2**30
        assert os_error_text(exc) == f"{2**30}: {exc.strerror}"
