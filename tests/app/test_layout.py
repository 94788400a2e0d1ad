"""The layout file: every mistake named with the file and the field; the watcher reports saves."""
from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from app.layout import LayoutError, LayoutWatcher, parse_layout, read_layout

GOOD = b"""
[grid]
rows = 2
columns = 2

[nodes.a]
address = "127.0.0.1:7101"
row = 1
column = 1

[nodes.b]
address = "127.0.0.1:7102"
row = 2
column = 2
"""


def test_a_valid_layout():
    layout = parse_layout(GOOD, "l.toml")
    assert (layout.rows, layout.columns, [n.id for n in layout.nodes]) == (2, 2, ["a", "b"])
    assert layout.digest == parse_layout(GOOD).digest != parse_layout(GOOD + b"\n").digest


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace(b"rows = 2", b"rows = 2\nrows = 3"), "l.toml: not valid TOML"),
    (lambda t: t.replace(b"[grid]", b"[gird]"), r"unknown section\(s\) gird"),
    (lambda t: t.replace(b"rows = 2", b"rows = \"two\""), r"\[grid\]: 'rows' must be a whole number, got 'two'"),
    (lambda t: t.replace(b"columns = 2", b"columns = 0"), "columns must be from 1 to 32, got 0"),
    (lambda t: t.replace(b"row = 2\n", b"row = 3\n"), r"node b: position \(3, 2\) is outside the 2x2 grid"),
    (lambda t: t.replace(b"row = 2\ncolumn = 2", b"row = 1\ncolumn = 1"), r"nodes a and b are both at \(1, 1\)"),
    (lambda t: t.replace(b'"127.0.0.1:7102"', b'"no-port"'), "node b: address 'no-port' must be HOST:PORT"),
    (lambda t: t.replace(b'address = "127.0.0.1:7102"', b'address = 7102'), r"\[nodes.b\]: 'address' must be"),
    (lambda t: t + b"colour = 1\n", r"\[nodes.b\]: unknown field\(s\) colour"),
    # a misspelt key is named as unknown, not as the key it stood in for being missing
    (lambda t: t.replace(b"rows = 2", b"row = 2"), r"\[grid\]: unknown field\(s\) row \(expected columns, rows\)"),
    (lambda t: t.replace(b'address = "127.0.0.1:7102"', b'adress = "127.0.0.1:7102"'),
     r"\[nodes.b\]: unknown field\(s\) adress \(expected address, column, row\)"),
    (lambda t: t.replace(b"row = 2\ncolumn = 2", b"row = 2\ncolumns = 2"), r"\[nodes.b\]: unknown field\(s\) columns"),
    (lambda t: t.replace(b"[nodes.b]", b"[nodes.\"b c\"]"), "node id 'b c' must be"),
    (lambda t: b"\xff\xfe" + t, "not valid TOML"),
])
def test_each_mistake_is_named(edit, message):
    with pytest.raises(LayoutError, match=message):
        parse_layout(edit(GOOD), "l.toml")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(LayoutError, match="nope.toml: cannot read the layout file"):
        read_layout(str(tmp_path / "nope.toml"))


def test_watcher_reports_valid_saves_once_and_invalid_ones_as_errors(tmp_path):
    path = tmp_path / "layout.toml"
    path.write_bytes(GOOD)
    layouts, errors = [], []
    seen = threading.Event()

    def on_layout(layout):
        layouts.append(layout)
        seen.set()

    def on_error(message, digest):
        errors.append((message, digest))
        seen.set()

    watcher = LayoutWatcher(str(path), on_layout, on_error, debounce=0.05).start(parse_layout(GOOD).digest)
    try:
        def save(data: bytes, atomic: bool = False) -> None:
            seen.clear()
            if atomic:  # as many editors do: write a temporary file, rename it over the original
                tmp = tmp_path / ".layout.toml.swp"
                tmp.write_bytes(data)
                os.replace(tmp, path)
            else:
                path.write_bytes(data)
            assert seen.wait(5), "the watcher did not report the save"
            time.sleep(0.2)  # any late duplicate event would arrive now

        bad = GOOD.replace(b"row = 2\n", b"row = 3\n")
        save(bad)
        assert errors and "position (3, 2) is outside the 2x2 grid" in errors[-1][0] and not layouts
        assert errors[-1][1] == hashlib.sha256(bad).hexdigest()[:16]  # which version was refused
        # saved back as it was: reported, so that the refusal shown to operators can go
        save(GOOD)
        assert [layout.digest for layout in layouts] == [parse_layout(GOOD).digest]
        layouts.clear()
        save(GOOD.replace(b"rows = 2", b"rows = 3"), atomic=True)
        assert [layout.rows for layout in layouts] == [3]
        seen.clear()
        os.utime(path)  # touched, not changed: nothing to report
        assert not seen.wait(0.5)
        assert len(layouts) == 1
    finally:
        watcher.close()
