"""Mutual HMAC-SHA256 challenge-response, run on the raw socket before RPyC starts.

Message by message (frames as in :mod:`rpc.wire`; ``K`` is the cluster secret)::

    client -> server  HELLO     [version, role, id, Nc]      Nc: 32 fresh random bytes
    server -> client  CHALLENGE [Ns]                         Ns: 32 fresh random bytes
    client -> server  PROOF     [HMAC(K, "client-proof" | T)]
    server -> client  OK        [HMAC(K, "server-proof" | T)]   or REFUSED [reason]

    T = msgpack(["pvl-auth", version, role, id, Nc, Ns])

The server checks the client's proof before it proves anything itself, so an
unauthenticated caller learns nothing keyed by K; the client then checks the server's
proof, so it never talks RPyC to something that does not hold the secret either. Both
nonces are fresh per connection, so a recorded proof is useless in another session; the
different labels keep a proof of one side from being reflected as the other side's; the
role and id are inside T, so they cannot be changed in transit.

The server side is an RPyC ``authenticator`` (:class:`ServerAuthenticator`); the client
side is :func:`client_handshake`. Optionally both wrap the socket in TLS first.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket
import ssl
import time
from typing import NamedTuple

import msgpack
from rpyc.utils.authenticators import AuthenticationError

from prevalence.errors import PrevalenceError

from .secret import check_secret
from .wire import (
    CHALLENGE,
    HELLO,
    MAX_FRAME,
    NONCE_SIZE,
    OK,
    PROOF,
    PROTOCOL_VERSION,
    REFUSED,
    ROLES,
    HandshakeError,
    _check_id,
    decode_message,
    encode_frame,
    read_frame,
    write_frame,
)

__all__ = [
    "Identity",
    "AuthenticationFailed",
    "ConnectFailed",
    "ServerAuthenticator",
    "client_handshake",
    "format_address",
    "DEFAULT_SERVER_HANDSHAKE_TIMEOUT",
]

log = logging.getLogger("rpc.auth")

#: How long a server waits for a connecting party to complete the handshake.
DEFAULT_SERVER_HANDSHAKE_TIMEOUT = 5.0

_CLIENT_LABEL = b"client-proof\x00"
_SERVER_LABEL = b"server-proof\x00"


class Identity(NamedTuple):
    """Who authenticated: ``("peer", node_id)`` or ``("client", client_id)``.

    The server's RPyC connection holds it as ``conn._config["credentials"]``.
    """

    role: str
    id: str


class AuthenticationFailed(PrevalenceError):
    """The other side refused our proof, failed to prove its own, or spoke garbage."""

    def __init__(self, message: str, *, address: str | None = None, refused: bool = False):
        super().__init__(message)
        self.address = address
        self.refused = refused  # the host answered that nothing listens there: the process is gone


class ConnectFailed(PrevalenceError):
    """A connection could not be opened or the handshake did not complete in time."""

    def __init__(self, message: str, *, address: str | None = None, refused: bool = False):
        super().__init__(message)
        self.address = address
        self.refused = refused  # the host answered that nothing listens there: the process is gone


def format_address(addr) -> str:
    """``("10.0.0.1", 7100)`` -> ``"10.0.0.1:7100"`` (IPv6 in brackets)."""
    try:
        host, port = addr[0], addr[1]
    except (TypeError, IndexError):
        return str(addr)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _transcript(version: int, role: str, ident: str, nc: bytes, ns: bytes) -> bytes:
    return msgpack.packb(["pvl-auth", version, role, ident, nc, ns], use_bin_type=True)


def _mac(secret: bytes, label: bytes, transcript: bytes) -> bytes:
    return hmac.new(secret, label + transcript, hashlib.sha256).digest()


class _Refused(Exception):
    """Internal: the server refuses; ``reason`` is logged and sent to the client."""


class ServerAuthenticator:
    """RPyC server authenticator: ``auth(sock) -> (sock, Identity)``.

    Refuses (``rpyc.utils.authenticators.AuthenticationError``) a wrong secret, a role not
    in ``roles``, a malformed or oversized frame, and a party that does not complete the
    handshake within ``timeout`` seconds (a deadline over the whole handshake, not per
    read). Every refusal is logged on ``rpc.auth`` with the peer address, and the socket
    is closed.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        timeout: float = DEFAULT_SERVER_HANDSHAKE_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        roles: tuple[str, ...] = ROLES,
        max_frame: int = MAX_FRAME,
    ):
        self._secret = check_secret(secret, "server authenticator")
        self.timeout = float(timeout)
        self.ssl_context = ssl_context
        self.roles = tuple(roles)
        self.max_frame = int(max_frame)

    def __call__(self, sock: socket.socket):
        try:
            peer = format_address(sock.getpeername())
        except OSError:
            peer = "<unknown address>"
        deadline = time.monotonic() + self.timeout
        claim: list[str] = []
        try:
            if self.ssl_context is not None:
                sock.settimeout(self.timeout)
                sock = self.ssl_context.wrap_socket(sock, server_side=True)
            identity = self._handshake(sock, deadline, claim)
        except _Refused as exc:
            reason = str(exc)
        except HandshakeError as exc:
            reason = str(exc)
        except socket.timeout:
            reason = f"handshake not completed within {self.timeout:g} s"
        except ssl.SSLError as exc:
            reason = f"TLS handshake failed: {exc.reason or exc}"
        except OSError as exc:
            reason = f"connection error during the handshake: {exc}"
        else:
            sock.settimeout(None)
            log.debug("authenticated %s as %s %r", peer, identity.role, identity.id)
            return sock, identity
        log.warning("refused connection from %s%s: %s", peer, "".join(claim), reason)
        try:
            sock.close()
        except OSError:
            pass
        raise AuthenticationError(f"{peer}: {reason}")

    def _refuse(self, sock, deadline: float, reason: str, public: str) -> None:
        try:
            write_frame(sock, encode_frame(REFUSED, public), max(deadline, time.monotonic() + 0.2))
        except (OSError, HandshakeError):
            pass
        raise _Refused(reason)

    def _handshake(self, sock, deadline: float, claim: list):
        body = read_frame(sock, deadline, self.max_frame)
        _, (version, role, ident, nc) = decode_message(body, (HELLO,))
        claim.append(f" (claims {role} {ident!r})")
        if version != PROTOCOL_VERSION:
            self._refuse(sock, deadline, f"unsupported handshake version {version}",
                         f"unsupported handshake version {version} (this node speaks {PROTOCOL_VERSION})")
        if role not in self.roles:
            self._refuse(sock, deadline, f"role {role!r} not accepted here", f"role {role!r} not accepted here")
        ns = os.urandom(NONCE_SIZE)
        write_frame(sock, encode_frame(CHALLENGE, ns), deadline)
        body = read_frame(sock, deadline, self.max_frame)
        _, (mac_c,) = decode_message(body, (PROOF,))
        transcript = _transcript(version, role, ident, nc, ns)
        if not hmac.compare_digest(mac_c, _mac(self._secret, _CLIENT_LABEL, transcript)):
            self._refuse(sock, deadline, "wrong cluster secret (client proof does not match)",
                         "authentication failed")
        write_frame(sock, encode_frame(OK, _mac(self._secret, _SERVER_LABEL, transcript)), deadline)
        return Identity(role, ident)


def client_handshake(
    sock: socket.socket,
    secret: bytes,
    role: str,
    ident: str,
    *,
    address: str | None = None,
    timeout: float = 2.0,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> socket.socket:
    """Authenticate a freshly connected socket as ``(role, ident)``; return the socket.

    With ``ssl_context`` the socket is wrapped in TLS first and the wrapped socket is
    returned. Raises :class:`AuthenticationFailed` (refused, bad server proof, garbage)
    or :class:`ConnectFailed` (timeout, connection lost), both naming ``address``.
    The socket is left open on failure; the caller closes it.
    """
    secret = check_secret(secret, "client handshake")
    if role not in ROLES:
        raise AuthenticationFailed(f"role must be one of {ROLES}, got {role!r}")
    try:
        _check_id(ident)
    except HandshakeError as exc:
        raise AuthenticationFailed(f"invalid {role} id {ident!r}: {exc}") from None
    if address is None:
        try:
            address = format_address(sock.getpeername())
        except OSError:
            address = "<unknown address>"
    deadline = time.monotonic() + timeout
    try:
        if ssl_context is not None:
            sock.settimeout(timeout)
            host = server_hostname or address.rsplit(":", 1)[0].strip("[]")
            sock = ssl_context.wrap_socket(sock, server_hostname=host)
        nc = os.urandom(NONCE_SIZE)
        write_frame(sock, encode_frame(HELLO, PROTOCOL_VERSION, role, ident, nc), deadline)
        tag, fields = decode_message(read_frame(sock, deadline), (CHALLENGE, REFUSED))
        if tag == REFUSED:
            raise AuthenticationFailed(f"{address} refused the connection: {fields[0]}", address=address)
        (ns,) = fields
        transcript = _transcript(PROTOCOL_VERSION, role, ident, nc, ns)
        write_frame(sock, encode_frame(PROOF, _mac(secret, _CLIENT_LABEL, transcript)), deadline)
        tag, fields = decode_message(read_frame(sock, deadline), (OK, REFUSED))
        if tag == REFUSED:
            raise AuthenticationFailed(
                f"{address} refused our authentication: {fields[0]} "
                "(wrong cluster secret? it must be the same file on every node and client)",
                address=address,
            )
        if not hmac.compare_digest(fields[0], _mac(secret, _SERVER_LABEL, transcript)):
            log.warning("%s failed to prove the cluster secret: connection dropped", address)
            raise AuthenticationFailed(
                f"{address} failed to prove knowledge of the cluster secret (wrong secret or impostor)",
                address=address,
            )
    except AuthenticationFailed:
        raise
    except HandshakeError as exc:
        raise AuthenticationFailed(f"handshake with {address} failed: {exc}", address=address) from None
    except socket.timeout:
        raise ConnectFailed(
            f"{address}: handshake not answered within {timeout:g} s (not a node of this cluster, or hung)",
            address=address,
        ) from None
    except ssl.SSLError as exc:
        raise AuthenticationFailed(f"TLS handshake with {address} failed: {exc.reason or exc}",
                                   address=address) from None
    except OSError as exc:
        raise ConnectFailed(f"{address}: connection lost during the handshake: {exc}", address=address) from None
    return sock
