"""Key files: one key per role (peer, client, admin), each in a file of its own.

A key is the file's bytes with trailing whitespace removed (``generate_secret_file``
writes 64 hex characters and a newline). It is never sent over the network: the two
sides only exchange HMACs computed with it (see :mod:`rpc.auth`). A key file others can
change, or a key one could guess, is refused: whoever holds the peer key runs code on
every node (docs/security.md).
"""
from __future__ import annotations

import logging
import math
import os
import secrets as _secrets
import stat
import sys

from prevalence._platform import NotRegularFile, private_file_problem, read_small_file
from prevalence.errors import PrevalenceError

__all__ = ["SecretError", "MIN_SECRET_LEN", "MIN_KEY_BITS", "KEY_FILES", "LEGACY_SECRET", "load_secret",
           "generate_secret_file", "check_secret", "key_strength_problem"]

log = logging.getLogger("rpc.secret")

#: Shortest accepted secret, in bytes.
MIN_SECRET_LEN = 16
#: A secret file larger than this is certainly not a secret file.
MAX_SECRET_FILE = 4096
#: The least a key must hold, where that can be judged (see :func:`key_strength_problem`).
MIN_KEY_BITS = 128
#: The file of each role's key, as ``prevalence cluster up`` names them in its directory.
KEY_FILES = {"peer": "peer.secret", "client": "client.secret", "admin": "admin.secret"}
#: The one key every node and client shared before keys had roles.
LEGACY_SECRET = "cluster.secret"

# Alphabets a key's characters may all come from, smallest first: hex, base64 and the
# like are common ways to write a random key down, and each holds fewer bits per byte.
_ALPHABETS = (
    (10, frozenset(b"0123456789")),
    (16, frozenset(b"0123456789abcdef")),
    (16, frozenset(b"0123456789ABCDEF")),
    (64, frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=")),
    (95, frozenset(range(0x20, 0x7F))),
)


class SecretError(PrevalenceError):
    """The cluster secret is missing, unreadable, empty or too short."""


def check_secret(secret: bytes, where: str = "secret") -> bytes:
    """Validate an in-memory secret; return it as bytes."""
    if isinstance(secret, (bytearray, memoryview)):
        secret = bytes(secret)
    if not isinstance(secret, bytes):
        raise SecretError(f"{where}: the cluster secret must be bytes, got {type(secret).__name__}")
    if len(secret) < MIN_SECRET_LEN:
        raise SecretError(
            f"{where}: the cluster secret is too short ({len(secret)} bytes, at least {MIN_SECRET_LEN} needed)"
        )
    return secret


def key_strength_problem(key: bytes) -> str | None:
    """Why ``key`` may hold fewer than 128 bits, or None.

    Two judgements, both on the bytes alone: the size of the smallest usual alphabet
    (digits, hex, base64, printable ASCII, any byte) that holds every byte bounds the
    bits per byte; and a key with far fewer distinct bytes than a random one of that
    length and alphabet would show (fewer than half as many) is a pattern, not a random
    key. A random key passes both for certain in practice; a pattern that uses many
    distinct bytes is beyond judging.
    """
    n, used = len(key), set(key)
    size = next((size for size, chars in _ALPHABETS if used <= chars), 256)
    bits = n * math.log2(size)
    if bits < MIN_KEY_BITS:
        return (f"key too weak: {n} characters from an alphabet of {size} hold at most {bits:.0f} bits, "
                f"at least {MIN_KEY_BITS} bits needed")
    expected = size * (1 - (1 - 1 / size) ** n)  # distinct bytes a random key of this kind shows
    if len(used) < expected / 2:
        return (f"key too weak: {len(used)} different characters in {n} (a random key shows about "
                f"{expected:.0f}): a pattern, far below {MIN_KEY_BITS} bits")
    return None


def load_secret(path: str | os.PathLike) -> bytes:
    """Read a key from ``path``.

    Raises :class:`SecretError` naming the file when it is missing, unreadable, empty,
    too short (< 16 bytes after stripping trailing whitespace), implausibly large, too
    weak (:func:`key_strength_problem`), or (POSIX) when the file or its directory is
    owned by another user or writable by group or others: whoever can change a key file
    chooses the key.
    """
    p = os.fspath(path)
    try:
        data, st = read_small_file(p, MAX_SECRET_FILE)  # a FIFO in a key file's place would block an open
    except NotRegularFile:
        raise SecretError(f"{p}: not a regular file (a device, a pipe or a socket), so not a key file") from None
    except FileNotFoundError:
        raise SecretError(f"{p}: key file not found (`prevalence cluster keys --cluster DIR` makes the missing "
                          "ones; copy a cluster's keys from where they were made, docs/operations.md "
                          "\"Keys\")") from None
    except IsADirectoryError:
        raise SecretError(f"{p}: is a directory, not a secret file") from None
    except OSError as exc:
        raise SecretError(f"{p}: cannot read the secret file: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_FILE:
        raise SecretError(f"{p}: secret file is larger than {MAX_SECRET_FILE} bytes; is this the right file?")
    secret = data.rstrip()
    if not secret:
        raise SecretError(f"{p}: secret file is empty")
    if len(secret) < MIN_SECRET_LEN:
        raise SecretError(
            f"{p}: secret is too short ({len(secret)} bytes, at least {MIN_SECRET_LEN} needed)"
        )
    problem = private_file_problem(st.st_mode, st.st_uid, _euid(), directory=False)
    if problem:
        raise SecretError(f"{p}: key file refused: it {problem}" + ("; chmod 600 it" if "writable" in problem else ""))
    directory = os.path.dirname(os.path.abspath(p))
    try:
        dst = os.stat(directory)
    except OSError as exc:
        raise SecretError(f"{p}: cannot check the key file's directory: {exc.strerror or exc}") from None
    problem = private_file_problem(dst.st_mode, dst.st_uid, _euid(), directory=True)
    if problem:
        raise SecretError(f"{p}: key file refused: its directory {directory} {problem}, who could replace the key"
                          + (f"; chmod go-w {directory}" if "writable" in problem else ""))
    problem = key_strength_problem(secret)
    if problem:
        raise SecretError(f"{p}: {problem} (generate_secret_file writes 256-bit keys)")
    if sys.platform != "win32" and stat.S_IMODE(st.st_mode) & 0o077:
        log.warning("%s: key file is readable by group or others (mode %o); chmod 600 it",
                    p, stat.S_IMODE(st.st_mode))
    return secret


def _euid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else -1


def generate_secret_file(path: str | os.PathLike, *, overwrite: bool = False) -> bytes:
    """Write a new secret (32 random bytes as 64 hex characters) to ``path``; return it.

    The file is created with mode 0600 where the OS supports it. An existing file is
    kept and :class:`SecretError` raised unless ``overwrite=True``: replacing the secret
    of a running cluster locks its nodes out of each other.
    """
    p = os.fspath(path)
    secret = _secrets.token_hex(32).encode("ascii")
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0)
    flags |= os.O_TRUNC if overwrite else os.O_EXCL
    try:
        fd = os.open(p, flags, 0o600)
    except FileExistsError:
        raise SecretError(f"{p}: secret file already exists (pass overwrite=True to replace it)") from None
    except OSError as exc:
        raise SecretError(f"{p}: cannot create the secret file: {exc.strerror or exc}") from None
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # also when overwriting a file with a wider mode
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(secret + b"\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        raise SecretError(f"{p}: cannot write the secret file: {exc.strerror or exc}") from None
    return secret
