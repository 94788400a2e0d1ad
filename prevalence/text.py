"""Text from elsewhere (a node's refusal, a file name, an exception's message) made fit for
a terminal and a log line: printable characters only, on one line, bounded."""
from __future__ import annotations

import os

__all__ = ["error_text", "one_line", "os_error_text"]


def one_line(text: str, limit: int | None = 300) -> str:
    """``text`` with every non-printable character (escape sequences, line breaks) a
    space, runs of spaces folded, and at most ``limit`` characters (None: all)."""
    if limit is not None:
        text = text[:limit * 4]  # the folding below shortens it by at most that much
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


def error_text(exc: BaseException, limit: int | None = 300) -> str:
    """``exc``'s message as :func:`one_line` makes it, or its type's name when it has none
    or formatting it fails (a hostile value's ``__str__``, a RecursionError)."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a message that cannot be formatted is still an error
        text = ""
    return one_line(text, limit) or one_line(type(exc).__name__, limit)


def os_error_text(exc: OSError) -> str:
    """``PATH: reason`` as the shell's tools say it (the OS's words, without Python's
    ``[Errno N]``), or the reason alone when the error names no file."""
    where = exc.filename if exc.filename is not None else ""
    what = exc.strerror or str(exc)
    if type(where) is int:  # a descriptor (os.stat(fd), os.listdir(fd)...): no path to decode
        where = str(where)
    return f"{os.fsdecode(where)}: {what}" if where != "" else what
