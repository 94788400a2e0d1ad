"""SimFileSystem keeps exactly what a power cut keeps, and its faults behave as documented."""
from __future__ import annotations

import errno
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prevalence.fs import CREATE, READ, WRITE, read_file, write_all
from prevalence.simfs import SimFileSystem

D = "/sim/d"


def new(seed: int = 0, **kw) -> SimFileSystem:
    fs = SimFileSystem(random.Random(seed), **kw)
    fs.makedirs(D)
    fs.fsync_dir("/sim")
    fs.fsync_dir("/")
    return fs


def put(fs: SimFileSystem, name: str, data: bytes, *, sync: bool = True, dir_sync: bool = True) -> int:
    fd = fs.open(os.path.join(D, name), CREATE)
    write_all(fs, fd, data)
    if sync:
        fs.fsync(fd)
    if dir_sync:
        fs.fsync_dir(D)
    return fd


@given(seed=st.integers(0, 2**32), durable=st.binary(max_size=40), pending=st.binary(max_size=40))
@settings(max_examples=200, deadline=None)
def test_a_crash_keeps_the_synced_bytes_and_a_prefix_of_the_rest(seed, durable, pending):
    fs = new(seed)
    fd = put(fs, "f", durable)
    write_all(fs, fd, pending)
    after = fs.crash()
    got = read_file(after, os.path.join(D, "f"))
    assert got == (durable + pending)[: len(got)] and len(got) >= len(durable)


def test_tears_land_on_every_byte_over_many_seeds():
    cuts = set()
    for seed in range(300):
        fs = new(seed)
        fd = put(fs, "f", b"")
        write_all(fs, fd, b"0123456789")
        cuts.add(len(read_file(fs.crash(), os.path.join(D, "f"))))
    assert cuts == set(range(11))


def test_fsync_makes_pending_bytes_durable():
    fs = new()
    put(fs, "f", b"abc")
    assert read_file(fs.crash(), os.path.join(D, "f")) == b"abc"


def test_a_file_never_fsynced_into_its_directory_is_gone_after_a_crash():
    fs = new()
    put(fs, "f", b"abc", dir_sync=False)
    assert not fs.crash().exists(os.path.join(D, "f"))


def test_a_directory_never_fsynced_into_its_parent_is_gone_with_its_files():
    fs = SimFileSystem(random.Random(0))
    fs.makedirs(D)
    put(fs, "f", b"abc")  # the file and D's entry for it are durable; D itself is not
    after = fs.crash()
    assert not after.isdir(D) and not after.exists(os.path.join(D, "f"))


@pytest.mark.parametrize("dir_sync", [True, False])
def test_rename_and_remove_are_durable_only_after_fsync_dir(dir_sync):
    fs = new()
    put(fs, "old", b"1")
    put(fs, "tmp", b"2")
    fs.replace(os.path.join(D, "tmp"), os.path.join(D, "new"))
    fs.remove(os.path.join(D, "old"))
    if dir_sync:
        fs.fsync_dir(D)
    names = fs.crash().listdir(D)
    assert names == (["new"] if dir_sync else ["old", "tmp"])


def test_an_unsynced_cut_may_come_back_but_a_synced_one_never():
    outcomes = set()
    for seed in range(40):
        fs = new(seed)
        fd = put(fs, "f", b"abcdef")
        fs.ftruncate(fd, 2)
        outcomes.add(read_file(fs.crash(), os.path.join(D, "f")))
    assert outcomes == {b"abcdef", b"ab"}
    fs = new()
    fd = put(fs, "f", b"abcdef")
    fs.ftruncate(fd, 2)
    fs.fsync(fd)
    assert read_file(fs.crash(), os.path.join(D, "f")) == b"ab"


def test_a_failed_fsync_loses_the_pages_even_if_a_later_one_succeeds():
    """Linux after EIO: the dirty pages are marked clean; a retried fsync writes nothing."""
    fs = new()
    fd = put(fs, "f", b"durable|")
    write_all(fs, fd, b"lost")
    fs.fail_fsync = True
    with pytest.raises(OSError) as info:
        fs.fsync(fd)
    assert info.value.errno == errno.EIO
    fs.fail_fsync = False
    fs.fsync(fd)  # "succeeds"
    assert read_file(fs, os.path.join(D, "f")) == b"durable|lost"  # the cache still shows them
    assert read_file(fs.crash(), os.path.join(D, "f")) == b"durable|" + bytes(4)


def test_a_full_disk_writes_a_prefix_then_raises_enospc():
    seen = set()
    for seed in range(50):
        fs = new(seed)
        fd = put(fs, "f", b"12345")
        fs.capacity = fs.used() + 3
        with pytest.raises(OSError) as info:
            fs.write(fd, b"abcdef")
        assert info.value.errno == errno.ENOSPC
        got = read_file(fs, os.path.join(D, "f"))
        assert got[:5] == b"12345" and len(got) <= 8 and got == (b"12345abcdef")[: len(got)]
        seen.add(len(got))
        fs.capacity = None
        fs.write(fd, b"!")
    assert seen == {5, 6, 7, 8}


def test_overwriting_needs_no_space():
    fs = new()
    fd = put(fs, "f", b"12345")
    fs.fill()
    fs.lseek(fd, 0, os.SEEK_SET)
    assert fs.write(fd, b"ab") == 2
    with pytest.raises(OSError):
        fs.lseek(fd, 0, os.SEEK_END) and fs.write(fd, b"c")


def test_latency_counts_and_trace_are_recorded_without_sleeping():
    fs = new(trace=True)
    fs.latency = {"fsync": 0.01, "*": 0.001}
    before = fs.elapsed
    put(fs, "f", b"x")
    assert fs.counts["fsync"] == 1 and fs.counts["write"] == 1
    assert fs.elapsed - before == pytest.approx(0.01 + 0.001 * 3)  # fsync; open, write, fsync_dir
    assert ("write", os.path.join(D, "f"), 1) in fs.trace


def test_the_crashed_machine_refuses_every_operation_and_fds_are_never_reused():
    fs = new()
    fd = put(fs, "f", b"x")
    fs.close(fd)
    fd2 = fs.open(os.path.join(D, "f"), READ)
    assert fd2 != fd
    with pytest.raises(OSError):
        fs.write(fd, b"y")  # closed
    with pytest.raises(OSError):
        fs.write(fd2, b"y")  # read-only
    fs.crash()
    with pytest.raises(OSError, match="crashed"):
        fs.open(os.path.join(D, "f"), WRITE)


def test_same_seed_same_crash():
    def run(seed):
        fs = new(seed)
        for k in range(5):
            fd = put(fs, f"f{k}", b"s" * k, dir_sync=k % 2 == 0)
            write_all(fs, fd, b"p" * 20)
        return fs.crash().files()

    assert run(7) == run(7)
    assert any(run(7) != run(s) for s in range(8, 12))
