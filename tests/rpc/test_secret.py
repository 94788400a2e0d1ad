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
    path.write_bytes(b"  abcdefghijklmnopqrstuvwxyz0123456789 \r\n\n")
    assert load_secret(path) == b"  abcdefghijklmnopqrstuvwxyz0123456789"


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
    path.write_bytes(bytes(range(200, 216)) + b"\n")  # 16 bytes of 256 possible values: 128 bits
    assert load_secret(path) == bytes(range(200, 216))


def test_unreadable_directory(tmp_path):
    with pytest.raises(SecretError) as ei:
        load_secret(tmp_path)
    assert str(tmp_path) in str(ei.value)


def test_oversized_file_is_not_a_secret(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(b"x" * 10000)
    with pytest.raises(SecretError, match="larger than"):
        load_secret(path)


# -- issue 15 item 6: a key file others can change, or a key one can guess, is refused


@pytest.mark.parametrize("key", [
    b"x" * 64,                                   # one character repeated
    b"abababababababababababababababababababab",  # two
    b"passwordpasswordpasswordpassword",         # a word repeated
    b"0123456789abcdef",                         # 16 hex digits: 64 bits
    b"12345678901234567890123456789012",         # 32 decimal digits: 106 bits
    b"aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbcccc",     # three
])
def test_a_guessable_key_is_refused(tmp_path, key):
    path = tmp_path / "s"
    path.write_bytes(key + b"\n")
    with pytest.raises(SecretError, match="too weak") as ei:
        load_secret(path)
    assert str(path) in str(ei.value) and "128 bits" in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("key", [
    b"0123456789abcdef0123456789abcdef",  # 32 hex digits: 128 bits (the test suites' keys)
    b"Zq7-pL2_xW9kVb4RtY6uN3mE1cJ8hG5sA0oD",  # 36 of base64url's 64 characters
    bytes(range(0, 256, 8)),  # 32 bytes, binary
])
def test_keys_of_128_bits_or_more_are_accepted(tmp_path, key):
    path = tmp_path / "s"
    path.write_bytes(key)
    assert load_secret(path) == key


def test_generated_keys_always_pass_the_strength_check(tmp_path):
    """A random key must never be taken for a weak one (64 hex digits often miss a digit)."""
    import secrets

    from rpc.secret import key_strength_problem

    assert load_secret(tmp_path / "k") if generate_secret_file(tmp_path / "k") else False
    for _ in range(5000):
        assert key_strength_problem(secrets.token_hex(32).encode()) is None
        assert key_strength_problem(secrets.token_bytes(16)) is None


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes (Windows: the ACL in docs/security.md)")
@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666, 0o622], ids=oct)
def test_a_key_file_others_can_write_is_refused(tmp_path, mode):
    path = tmp_path / "peer.secret"
    generate_secret_file(path)
    os.chmod(path, mode)
    with pytest.raises(SecretError, match="writable by") as ei:
        load_secret(path)
    assert str(path) in str(ei.value) and "chmod 600" in str(ei.value)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_a_readable_key_file_is_loaded_with_a_warning(tmp_path, caplog):
    path = tmp_path / "client.secret"
    key = generate_secret_file(path)
    os.chmod(path, 0o644)
    assert load_secret(path) == key
    assert any("readable by group or others" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() != 0, reason="chown to another user needs root")
def test_a_key_file_owned_by_another_user_is_refused(tmp_path):
    path = tmp_path / "peer.secret"
    generate_secret_file(path)
    os.chown(path, 54321, -1)
    with pytest.raises(SecretError, match="owned by another user") as ei:
        load_secret(path)
    assert "uid 54321" in str(ei.value)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() != 0, reason="chown to another user needs root")
def test_a_key_in_a_directory_of_another_user_is_refused(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    generate_secret_file(keys / "peer.secret")
    os.chown(keys, 54321, -1)
    with pytest.raises(SecretError, match="directory .* owned by another user"):
        load_secret(keys / "peer.secret")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_a_key_in_a_directory_others_can_write_is_refused(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    generate_secret_file(keys / "peer.secret")
    os.chmod(keys, 0o777)  # anyone may rename another file over the key
    with pytest.raises(SecretError, match="directory .* writable by group or others") as ei:
        load_secret(keys / "peer.secret")
    assert "chmod go-w" in str(ei.value)
    os.chmod(keys, 0o1777)  # sticky (like /tmp): only the owner may replace it
    assert load_secret(keys / "peer.secret")


def test_the_posix_rules_as_data():
    """The rule itself, on (mode, owner) pairs: the same function load_secret applies."""
    from prevalence._platform import WINDOWS, private_file_problem

    if WINDOWS:
        assert private_file_problem(0o666, 1, 2, directory=False) is None  # the ACL is documented instead
        return
    assert private_file_problem(0o100600, 1000, 1000, directory=False) is None
    assert private_file_problem(0o100600, 0, 1000, directory=False) is None  # root's is fine
    assert "owned by another user" in private_file_problem(0o100600, 1001, 1000, directory=False)
    assert "writable by group" in private_file_problem(0o100620, 1000, 1000, directory=False)
    assert private_file_problem(0o40755, 1000, 1000, directory=True) is None
    assert private_file_problem(0o41777, 1000, 1000, directory=True) is None
    assert "writable by group or others" in private_file_problem(0o40775, 1000, 1000, directory=True)
