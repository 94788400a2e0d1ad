import os
import stat
import sys

import pytest

from prevalence.errors import PrevalenceError
from rpc import SecretError, generate_secret_file, load_secret


def test_generate_then_load_roundtrip(tmp_path):
    path = tmp_path / "cluster.secret"
    secret = generate_secret_file(path)
    assert len(secret) == 64
    int(secret, 16)  # hex
    assert path.read_bytes() == secret + b"\n"
    assert load_secret(path) == secret


def test_generated_secrets_differ(tmp_path):
    assert generate_secret_file(tmp_path / "a") != generate_secret_file(tmp_path / "b")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_generated_file_is_private(tmp_path):
    path = tmp_path / "cluster.secret"
    generate_secret_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_generate_refuses_to_overwrite(tmp_path):
    path = tmp_path / "cluster.secret"
    first = generate_secret_file(path)
    with pytest.raises(SecretError, match="already exists"):
        generate_secret_file(path)
    assert load_secret(path) == first
    second = generate_secret_file(path, overwrite=True)
    assert second != first and load_secret(path) == second


def test_load_strips_trailing_whitespace_only(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(b"  abcdefghijklmnopqrstuvwxyz \r\n\n")
    assert load_secret(path) == b"  abcdefghijklmnopqrstuvwxyz"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.secret"
    with pytest.raises(SecretError, match="not found") as ei:
        load_secret(path)
    assert str(path) in str(ei.value)
    assert isinstance(ei.value, PrevalenceError)


@pytest.mark.parametrize("content", [b"", b"\n", b"   \r\n\t"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "s"
    path.write_bytes(content)
    with pytest.raises(SecretError, match="empty") as ei:
        load_secret(path)
    assert str(path) in str(ei.value)


def test_too_short(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(b"fifteen-bytes!!\n")
    with pytest.raises(SecretError, match=r"too short \(15 bytes, at least 16"):
        load_secret(path)
    path.write_bytes(b"sixteen-bytes!!!\n")
    assert load_secret(path) == b"sixteen-bytes!!!"


def test_unreadable_directory(tmp_path):
    with pytest.raises(SecretError) as ei:
        load_secret(tmp_path)
    assert str(tmp_path) in str(ei.value)


def test_oversized_file_is_not_a_secret(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(b"x" * 10000)
    with pytest.raises(SecretError, match="larger than"):
        load_secret(path)
