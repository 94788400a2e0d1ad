"""The cluster secret: a file every node and client of one cluster shares.

The key is the file's bytes with trailing whitespace removed (``generate_secret_file``
writes 64 hex characters and a newline). It is never sent over the network: peers only
exchange HMACs computed with it (see :mod:`rpc.auth`).
"""
from __future__ import annotations

import logging
import os
import secrets as _secrets
import stat
import sys

from prevalence.errors import PrevalenceError

__all__ = ["SecretError", "MIN_SECRET_LEN", "load_secret", "generate_secret_file", "check_secret"]

log = logging.getLogger("rpc.secret")

#: Shortest accepted secret, in bytes.
MIN_SECRET_LEN = 16
#: A secret file larger than this is certainly not a secret file.
MAX_SECRET_FILE = 4096


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


def load_secret(path: str | os.PathLike) -> bytes:
    """Read the cluster secret from ``path``.

    Raises :class:`SecretError` naming the file when it is missing, unreadable, empty,
    too short (< 16 bytes after stripping trailing whitespace) or implausibly large.
    """
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_SECRET_FILE + 1)
            st = os.fstat(f.fileno())
    except FileNotFoundError:
        raise SecretError(f"{p}: secret file not found (generate one with generate_secret_file)") from None
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
    if sys.platform != "win32" and stat.S_IMODE(st.st_mode) & 0o077:
        log.warning("%s: secret file is readable by group or others (mode %o); chmod 600 it",
                    p, stat.S_IMODE(st.st_mode))
    return secret


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
