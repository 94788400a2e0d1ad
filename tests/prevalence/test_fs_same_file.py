"""OsFileSystem.same_file: does a journal segment's path still name the file its writer
has open? What the journal asks after each fsync (prevalence.journal)."""
from __future__ import annotations

import os

import pytest

import prevalence._platform as platform
from prevalence.fs import OS


@pytest.mark.skipif(platform.WINDOWS, reason="an open file cannot be deleted on Windows")
def test_a_deleted_or_replaced_file_is_told_apart(tmp_path):
    path = str(tmp_path / "seg")
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    try:
        assert OS.same_file(fd, path)
        os.remove(path)
        assert not OS.same_file(fd, path)
        open(path, "wb").close()  # another file now at that path
        assert not OS.same_file(fd, path)
    finally:
        os.close(fd)


def test_windows_never_calls_an_open_file_gone_on_its_identity_numbers(tmp_path, monkeypatch):
    """On Windows a file this process opened cannot be deleted or renamed over (it is
    opened without FILE_SHARE_DELETE), so the path always names it; but st_ino and st_dev
    from a path and from a handle disagree on some volumes (ReFS's 128-bit ids, WebDAV and
    other network drives give 0 for one of them), and the node halted at its first
    durable write there, calling its journal deleted."""
    path = str(tmp_path / "seg")
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    real_stat = os.stat
    monkeypatch.setattr(platform, "WINDOWS", True)
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: os.stat_result((*real_stat(p)[:1], 0, *real_stat(p)[2:10])))
    try:
        assert OS.same_file(fd, path)
    finally:
        os.close(fd)
