"""Text from elsewhere (a node's refusal, a file name, an exception's message) made fit for
a terminal and a log line: printable characters only, on one line, bounded."""
from __future__ import annotations

__all__ = ["one_line"]


def one_line(text: str, limit: int | None = 300) -> str:
    """``text`` with every non-printable character (escape sequences, line breaks) a
    space, runs of spaces folded, and at most ``limit`` characters (None: all)."""
    if limit is not None:
        text = text[:limit * 4]  # the folding below shortens it by at most that much
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."
