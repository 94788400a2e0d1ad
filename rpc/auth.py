"""Mutual HMAC-SHA256 challenge-response, run on the raw socket before RPyC starts.

A node holds one key per role: ``peer`` (the other nodes), ``client`` (operator
programs) and ``admin`` (cluster administration). Message by message (frames as in
:mod:`rpc.wire`; ``K`` is the key the connecting party holds)::

    client -> server  HELLO     [version, id, Nc(, C, E(, D))]   Nc: 32 fresh random bytes
    server -> client  CHALLENGE [Ns]                         Ns: 32 fresh random bytes
    client -> server  PROOF     [HMAC(K, "client-proof" | T)]
    server -> client  OK        [HMAC(K, "server-proof" | T | role), role]   or REFUSED [reason]

    T = msgpack(["pvl-auth", version, id, Nc, Ns(, C, E(, D))])

A node names D, the node it dials; a node refuses a hello meant for another (a party the
leader dialled, a learner an admin added at its own address, passed the leader's hello
and proof on to a node and was the leader there). D is in T: it cannot be removed.

A node adds its cluster id C and epoch E (from its data's identity.toml; a client
program sends neither). Once the proof matched the peer key, a server whose own data
names a cluster refuses a peer of another cluster id or another epoch, naming both:
two clusters that share a peer key stay apart, and a node whose data predates a
``cluster recover`` cannot rejoin before it is wiped. A side that knows no cluster id
yet is not compared: a founder made by ``--init`` before the cluster's first leader set
the id in the log (``rpc.identity``), or data from before cluster ids. The id and epoch
are validated (``replication.membership.cluster_id_problem``) before anything else.

The role is the one whose key the proof matches: the server tries each of its keys, so
nobody can claim a role, only prove one, and the keys must differ. The server checks the
client's proof before it proves anything itself, so an unauthenticated caller learns
nothing keyed by K; the client then checks the server's proof (which binds the role
granted), so it never talks RPyC to something that does not hold its key either. Both
nonces are fresh per connection, so a recorded proof is useless in another session; the
different labels keep a proof of one side from being reflected as the other side's; the
id is inside T, so it cannot be changed in transit.

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
import threading
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import msgpack
from rpyc.utils.authenticators import AuthenticationError

from prevalence.errors import PrevalenceError
from replication.membership import cluster_id_problem

from .epochs import client_mismatch, peer_proved_epoch
from .frame_mac import FrameKeys, frame_keys
from .secret import KEY_FILES, SecretError, check_secret, key_strength_problem
from .wire import (
    CHALLENGE,
    HELLO,
    MAX_FRAME,
    NONCE_SIZE,
    OK,
    PEER_PROTOCOL_VERSION,
    PROOF,
    PROTOCOL_VERSION,
    REFUSED,
    ROLES,
    CLOSED_ON_HELLO,
    HandshakeClosed,
    HandshakeError,
    UnsupportedVersion,
    _check_id,
    version_refusal,
    decode_message,
    encode_frame,
    read_frame,
    write_frame,
)

__all__ = [
    "ClusterKey",
    "Identity",
    "PeerIdentity",
    "AuthenticationFailed",
    "ConnectFailed",
    "ServerAuthenticator",
    "client_handshake",
    "peer_handshake",
    "format_address",
    "check_role_keys",
    "DEFAULT_SERVER_HANDSHAKE_TIMEOUT",
]

log = logging.getLogger("rpc.auth")

#: How long a server waits for a connecting party to complete the handshake.
DEFAULT_SERVER_HANDSHAKE_TIMEOUT = 5.0
REFUSAL_LOG_EVERY = 60.0  # seconds between two lines about the same refusal (same host, claim, reason)

_CLIENT_LABEL = b"client-proof\x00"
_SERVER_LABEL = b"server-proof\x00"

#: The roles a client accepts being granted for the role its key is meant for: an admin
#: key also gives what a client key gives, so a client program may hold either.
_GRANTS = {"peer": ("peer",), "client": ("client", "admin"), "admin": ("admin",)}


class Identity(NamedTuple):
    """Who authenticated: ``("peer", node_id)``, ``("client", client_id)`` or
    ``("admin", client_id)``; the role is the one whose key proved itself, the id is the
    connecting party's word (a peer's is checked against the membership by the node).

    The server's RPyC connection holds it as ``conn._config["credentials"]``.
    """

    role: str
    id: str


class PeerIdentity(Identity):
    """The Identity of a peer connection, with the keys its frames are authenticated with
    (``frame_keys``, rpc.frame_mac): an Identity still, which compares, unpacks and prints
    as one (the keys never appear in it)."""

    frame_keys: FrameKeys


class AuthenticationFailed(PrevalenceError):
    """The other side refused our proof, failed to prove its own, or spoke garbage."""

    def __init__(self, message: str, *, address: str | None = None, refused: bool = False,
                 key_refused: bool = False):
        super().__init__(message)
        self.address = address
        self.refused = refused  # the host answered that nothing listens there: the process is gone
        # the node answered the handshake and refused our key (or proved it holds another):
        # a configuration error that no retry changes, unlike a handshake cut short
        self.key_refused = key_refused


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


#: How a refusal for another cluster or epoch starts: the key was right, the data is not.
CLUSTER_MISMATCH = "cluster mismatch: "
#: How a node's refusal of a hello meant for another node begins (not a wrong key).
WRONG_NODE = "this is node "


_SEEN_LOCK = threading.Lock()


class ClusterKey(bytes):
    """The peer key of a node, bound to the cluster id and epoch of the node's data: the
    handshake sends them with the node's hello and the server checks them. A bytes
    value, so it travels wherever the peer key does (transport, server) unchanged.

    A node whose data has no id yet holds one bound to ("", 0) and :meth:`rebind` s it
    when it learns the id from the log: every handshake after that, in both directions,
    carries and checks it.

    It also keeps the newest epoch of each cluster that a peer proved it holds in a
    handshake accepted here (:meth:`newest_seen`): a node that learns its id from the log
    must not take an epoch older than its leader's (``rpc.identity``)."""

    _binding: tuple[str, int]
    _seen: dict[str, int]
    _newer: dict[str, int]  # later epochs of a cluster that refused peers proved (rpc.epochs)
    #: called (cluster, epoch) when a peer first proves a later epoch: the node keeps it on disk
    on_newer: Callable[[str, int], None] | None
    _MAX_SEEN = 16  # clusters remembered: a key shared by more is a misconfiguration anyway

    def __new__(cls, key: bytes, cluster: str = "", epoch: int = 0) -> "ClusterKey":
        self = super().__new__(cls, key)
        self._binding = (str(cluster), int(epoch))
        self._seen = {}
        self._newer = {}
        self.on_newer = None
        return self

    def saw(self, cluster: str, epoch: int) -> None:
        """A peer of ``cluster`` at ``epoch`` passed a handshake with this key."""
        with _SEEN_LOCK:  # two handshakes at once: the lower epoch must not overwrite the higher
            seen = self._seen
            if epoch > seen.get(cluster, -1) and (cluster in seen or len(seen) < self._MAX_SEEN):
                self._seen = {**seen, cluster: epoch}  # one assignment: readers see a whole dict

    def newest_seen(self, cluster: str) -> int:
        """The newest epoch of ``cluster`` a peer proved in a handshake here, -1 if none."""
        return self._seen.get(cluster, -1)

    def heard_newer(self, cluster: str, epoch: int) -> bool:
        """A peer proved (with this key) that ``cluster`` is at ``epoch``, later than this
        node's data: refused, yet proof that this node was left out of a recover
        (``rpc.epochs``). True the first time that epoch is heard of."""
        with _SEEN_LOCK:
            if epoch <= self._newer.get(cluster, -1) or (cluster not in self._newer and
                                                          len(self._newer) >= self._MAX_SEEN):
                return False
            self._newer = {**self._newer, cluster: epoch}
            return True

    def superseded(self) -> int | None:
        """The later epoch of this node's own cluster that a peer proved, None if none."""
        cluster, epoch = self._binding
        newer = self._newer.get(cluster, -1) if cluster else -1
        return newer if newer > epoch else None

    def rebind(self, cluster: str, epoch: int) -> None:
        """The cluster this key now speaks for (one assignment: a handshake sees the old
        pair or the new one, never half of each)."""
        self._binding = (str(cluster), int(epoch))

    @property
    def cluster(self) -> str:
        return self._binding[0]

    @property
    def epoch(self) -> int:
        return self._binding[1]


def _cluster_of(key: bytes) -> tuple[str, int]:
    return getattr(key, "_binding", ("", 0))


def cluster_mismatch(ident: str, theirs: tuple[str, int], ours: tuple[str, int]) -> str | None:
    """Why a peer of cluster ``theirs`` must not talk to a node of ``ours`` (one line,
    naming both), or None. Unknown ids ("") are not compared."""
    if not theirs[0] or not ours[0] or theirs == ours:
        return None
    both = (f"{ident!r} is of cluster {theirs[0]} epoch {theirs[1]}, this node of cluster {ours[0]} "
            f"epoch {ours[1]}")
    if theirs[0] != ours[0]:
        return f"{both}: another cluster that shares the peer key; check that node's data and configuration"
    older = "its" if theirs[1] < ours[1] else "this node's"
    return (f"{both}: {older} data is from before a `cluster recover`; wipe it and add the node back as a learner "
            "(docs/operations.md)")


def _transcript(version: int, ident: str, nc: bytes, ns: bytes, cluster: str = "", epoch: int = 0,
                target: str = "") -> bytes:
    fields = ["pvl-auth", version, ident, nc, ns] + ([cluster, epoch, target] if target else
                                                     [cluster, epoch] if cluster else [])
    return msgpack.packb(fields, use_bin_type=True)


def _mac(secret: bytes, label: bytes, transcript: bytes) -> bytes:
    return hmac.new(secret, label + transcript, hashlib.sha256).digest()


def _server_mac(secret: bytes, transcript: bytes, role: str) -> bytes:
    return _mac(secret, _SERVER_LABEL, transcript + msgpack.packb(role))


def check_role_keys(keys: "Mapping[str, bytes | Sequence[bytes]] | bytes",
                    where: str = "keys") -> dict[str, tuple[bytes, ...]]:
    """The keys a server accepts, by role: ``{role: key}`` or ``{role: (key, also, ...)}``
    (the first is the one the node itself uses; the others are also accepted, while a
    key is being replaced). A bare ``bytes`` is a peer key alone.

    Refuses (SecretError) an unknown role, a short or guessable key, and one key for
    two roles: the role is told by which key proves itself, so one key for two roles
    would give the weaker role's holders the stronger one.
    """
    if isinstance(keys, (bytes, bytearray, memoryview)):
        keys = {"peer": bytes(keys)}
    out: dict[str, tuple[bytes, ...]] = {}
    for role, given in dict(keys).items():
        if role not in ROLES:
            raise SecretError(f"{where}: unknown role {role!r} (one of {', '.join(ROLES)})")
        given = (given,) if isinstance(given, (bytes, bytearray, memoryview)) else tuple(given)
        if not given:
            raise SecretError(f"{where}: no {role} key given")
        out[role] = tuple(check_secret(k, f"{where}: the {role} key") for k in given)
        for k in out[role]:
            problem = key_strength_problem(k)
            if problem:
                raise SecretError(f"{where}: the {role} key: {problem}")
    if not out:
        raise SecretError(f"{where}: no key given")
    by_key: dict[bytes, str] = {}
    for role, ks in out.items():
        for k in ks:
            if k in by_key and by_key[k] != role:
                raise SecretError(f"{where}: the {by_key[k]} and {role} keys are the same key: each role needs its "
                                  f"own ({KEY_FILES[by_key[k]]} and {KEY_FILES[role]} must differ)")
            by_key[k] = role
    return out


class _Refused(Exception):
    """Internal: the server refuses; ``reason`` is logged and sent to the client."""


class ServerAuthenticator:
    """RPyC server authenticator: ``auth(sock) -> (sock, Identity)``.

    ``keys`` maps each role this server accepts to its key, or keys (see
    :func:`check_role_keys`); the role granted is the one whose key the client's proof
    matches. Refuses (``AuthenticationError``) a proof that matches no key, a malformed
    or oversized frame, and a party that does not complete the handshake within
    ``timeout`` seconds (a deadline over the whole handshake, not per read). Every
    refusal is logged on ``rpc.auth`` with the peer address (the same one from the same
    host at most once a minute: a stale node dials for months), and the socket closed.
    """

    def __init__(
        self,
        keys: "Mapping[str, bytes | Sequence[bytes]] | bytes",
        *,
        timeout: float = DEFAULT_SERVER_HANDSHAKE_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        max_frame: int = MAX_FRAME,
        node_id: str | None = None,
    ):
        self._keys = check_role_keys(keys, "server authenticator")
        self.node_id = node_id  # a hello naming another node is refused (None: not checked)
        self.timeout = float(timeout)
        self.ssl_context = ssl_context
        self.roles = tuple(self._keys)
        self.max_frame = int(max_frame)
        self._refusals: dict[tuple, list] = {}  # (host, claim, reason) -> [logged at, left out since]
        self._refusals_lock = threading.Lock()

    @property
    def cluster(self) -> tuple[str, int]:
        """The cluster id and epoch of this node's data, read at each handshake: a node
        that learns its id from the log starts checking at once."""
        return _cluster_of(self._keys["peer"][0]) if "peer" in self._keys else ("", 0)

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
            reason = f"TLS handshake failed: {tls_failure(exc)}"
        except OSError as exc:
            reason = f"connection error during the handshake: {exc}"
        else:
            sock.settimeout(None)
            log.debug("authenticated %s as %s %r", peer, identity.role, identity.id)
            return sock, identity
        self._log_refusal(peer, "".join(claim), reason)
        try:
            sock.close()
        except OSError:
            pass
        raise AuthenticationError(f"{peer}: {reason}")

    def _log_refusal(self, peer: str, claim: str, reason: str) -> None:
        """The same refusal again only once a minute, with how many were left out."""
        key, now = (peer.rsplit(":", 1)[0], claim, reason), time.monotonic()  # each try: a new port
        with self._refusals_lock:
            seen = self._refusals.get(key)
            if seen is not None and now - seen[0] < REFUSAL_LOG_EVERY:
                seen[1] += 1
                return
            if len(self._refusals) >= 256:
                self._refusals.clear()  # many parties at once: forget rather than grow
            self._refusals[key] = [now, 0]
        more = f" ({seen[1]} more like it in the last {now - seen[0]:.0f} s)" if seen is not None and seen[1] else ""
        log.warning("refused connection from %s%s: %s%s", peer, claim, reason, more)

    def _refuse(self, sock, deadline: float, reason: str, public: str) -> None:
        try:
            write_frame(sock, encode_frame(REFUSED, public), max(deadline, time.monotonic() + 0.2))
        except (OSError, HandshakeError):
            pass
        raise _Refused(reason)

    def _handshake(self, sock, deadline: float, claim: list):
        body = read_frame(sock, deadline, self.max_frame)
        try:
            _, (version, ident, nc, cluster, epoch, target) = decode_message(body, (HELLO,))
        except UnsupportedVersion as exc:  # the log says it as the party is told: another release
            self._refuse(sock, deadline, version_refusal(exc.version), version_refusal(exc.version))
        claim.append(f" (says it is {ident!r})")
        problem = cluster_id_problem(cluster, epoch) if cluster else None  # as a log entry's; "": none yet
        if problem:
            self._refuse(sock, deadline, f"malformed cluster identity in the hello: {problem}",
                         "malformed cluster identity")
        ns = os.urandom(NONCE_SIZE)
        write_frame(sock, encode_frame(CHALLENGE, ns), deadline)
        body = read_frame(sock, deadline, self.max_frame)
        _, (mac_c,) = decode_message(body, (PROOF,))
        transcript = _transcript(version, ident, nc, ns, cluster, epoch, target)
        # every key is tried, each in constant time: which one matched is the role
        matched = [(role, key) for role, keys in self._keys.items() for key in keys
                   if hmac.compare_digest(mac_c, _mac(key, _CLIENT_LABEL, transcript))]
        if len(matched) != 1:
            self._refuse(sock, deadline, f"wrong key (the proof matches none of this node's {', '.join(self.roles)} "
                         "keys)", "authentication failed")
        role, key = matched[0]
        # after the proof, as the cluster mismatch: who this node is, is for a key holder
        if target and self.node_id is not None and target != self.node_id:
            self._refuse(sock, deadline, f"{ident!r:.40} dialled node {target!r:.40}, this is node {self.node_id!r:.40}: "
                         "a relayed handshake, or a membership address that names the wrong node",
                         f"{WRONG_NODE}{self.node_id!r:.40}, not {target!r:.40}")
        if role == "peer" and version != PEER_PROTOCOL_VERSION:
            # what follows the handshake differs: RPyC for programs, batches between nodes
            self._refuse(sock, deadline, f"{ident!r:.40} holds the peer key but speaks protocol {version}, "
                         "an older node's (RPyC between nodes)",
                         f"this node speaks protocol {PEER_PROTOCOL_VERSION} to nodes, not {version}: "
                         "every node of a cluster must run the same release; a program (client or admin) never "
                         f"holds the peer key: it uses {KEY_FILES['client']} or {KEY_FILES['admin']}, not "
                         f"{KEY_FILES['peer']}")
        if role == "peer":  # the key is right; the data behind it may belong elsewhere
            mismatch = cluster_mismatch(ident, (cluster, epoch), self.cluster)
            if mismatch:
                # refused, yet proof (the peer key's) that this node was left out of a recover
                peer_proved_epoch(key, self.node_id or "this node", ident, (cluster, epoch), self.cluster)
                self._refuse(sock, deadline, mismatch, CLUSTER_MISMATCH + mismatch)
            if cluster and isinstance(key, ClusterKey):
                key.saw(cluster, epoch)
        else:  # a program's hello may name the cluster and epoch it wants (rpc.epochs)
            mismatch = client_mismatch(self.node_id or "unnamed", self.cluster, (cluster, epoch))
            if mismatch:
                wants = f"{ident!r:.40} ({role}) wants cluster {cluster or '(any)'} epoch {epoch}"
                self._refuse(sock, deadline, f"{wants}: {mismatch}", CLUSTER_MISMATCH + mismatch)
        write_frame(sock, encode_frame(OK, _server_mac(key, transcript, role), role), deadline)
        if role != "peer":
            return Identity(role, ident)
        identity = PeerIdentity(role, ident)
        identity.frame_keys = frame_keys(key, transcript)  # what follows is authenticated frame by frame
        return identity


def client_handshake(sock: socket.socket, secret: bytes, role: str, ident: str, **options: Any) -> socket.socket:
    """:func:`peer_handshake`'s socket alone (a client or an admin program; a node needs
    the frame keys for what follows). ``options`` as there."""
    return peer_handshake(sock, secret, role, ident, **options)[0]


def peer_handshake(
    sock: socket.socket,
    secret: bytes,
    role: str,
    ident: str,
    *,
    address: str | None = None,
    timeout: float = 2.0,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    target: str | None = None,
    want: tuple[str, int] | None = None,
) -> tuple[socket.socket, FrameKeys | None]:
    """Authenticate a freshly connected socket with ``secret``, the key of ``role``;
    return the socket and, for role ``"peer"``, the keys of the frames that follow
    (:func:`rpc.frame_mac.frame_keys`; None for a program). ``target``: the id of the node
    dialled (a node names it, so that its proof is good for that node only). ``want``:
    the cluster id and epoch a program wants (``rpc.epochs``); a node of another cluster
    or an older epoch refuses it.

    The server grants the role whose key the proof matches; a grant other than ``role``
    (or, for ``"client"``, ``"admin"``) is refused here: the wrong key file is configured.
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
        if target is not None:
            _check_id(target)
    except HandshakeError as exc:
        raise AuthenticationFailed(f"invalid {role} id {ident!r} or target {target!r}: {exc}") from None
    target = target or ""
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
        cluster, epoch = _cluster_of(secret) if role == "peer" else (want or ("", 0))
        version = PEER_PROTOCOL_VERSION if role == "peer" else PROTOCOL_VERSION
        # a program's wanted pair travels as a node's own does: every node of protocol 4
        # reads a hello of 5 fields (one of an earlier release compares nothing)
        named = cluster or (role != "peer" and want is not None)
        hello = (version, ident, nc) + ((cluster, epoch, target) if target else (cluster, epoch) if named else ())
        write_frame(sock, encode_frame(HELLO, *hello), deadline)
        try:
            tag, fields = decode_message(read_frame(sock, deadline), (CHALLENGE, REFUSED))
        except HandshakeClosed:
            if role != "peer":
                raise
            raise AuthenticationFailed(f"{address} {CLOSED_ON_HELLO}", address=address) from None
        if tag == REFUSED and fields[0].startswith("unsupported handshake version"):
            # the same refusal at every try, whatever its words (an older release's say "a key per role")
            raise AuthenticationFailed(f"{address} runs another release: it refused the connection: {fields[0]}",
                                       address=address, key_refused=True)
        if tag == REFUSED:
            raise AuthenticationFailed(f"{address} refused the connection: {fields[0]}", address=address)
        (ns,) = fields
        transcript = _transcript(version, ident, nc, ns, cluster, epoch, target)
        write_frame(sock, encode_frame(PROOF, _mac(secret, _CLIENT_LABEL, transcript)), deadline)
        tag, fields = decode_message(read_frame(sock, deadline), (OK, REFUSED))
        if tag == REFUSED and fields[0].startswith(CLUSTER_MISMATCH) and role != "peer":
            # a node of another cluster or an older epoch than this program wants: its words
            raise AuthenticationFailed(f"{address}: {fields[0][len(CLUSTER_MISMATCH):]}", address=address,
                                       key_refused=True)
        if tag == REFUSED and fields[0].startswith(CLUSTER_MISMATCH):
            raise AuthenticationFailed(f"{address} refused us: {fields[0]}", address=address, key_refused=True)
        if tag == REFUSED and fields[0].startswith(WRONG_NODE):  # the key is right, the address names another node
            raise AuthenticationFailed(f"{address} refused the connection: {fields[0]}", address=address)
        if tag == REFUSED:
            raise AuthenticationFailed(
                f"{address} refused our authentication: {fields[0]} "
                f"(wrong key? {_a(role)} uses the cluster's {KEY_FILES[role]})",
                address=address, key_refused=True,
            )
        mac_s, granted = fields
        if not hmac.compare_digest(mac_s, _server_mac(secret, transcript, granted)):
            log.warning("%s failed to prove it holds our key: connection dropped", address)
            raise AuthenticationFailed(
                f"{address} failed to prove knowledge of our key (a node of another cluster, or an impostor)",
                address=address, key_refused=True,
            )
        if granted not in _GRANTS[role]:
            raise AuthenticationFailed(
                f"{address} took our key for its {granted} key, not the {role} key: the wrong key file is "
                f"configured here ({_a(role)} uses {KEY_FILES[role]})", address=address, key_refused=True)
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
        raise AuthenticationFailed(f"TLS handshake with {address} failed: {tls_failure(exc)}",
                                   address=address) from None
    except OSError as exc:
        raise ConnectFailed(f"{address}: connection lost during the handshake: {exc}", address=address) from None
    return sock, (frame_keys(secret, transcript) if role == "peer" else None)


def _a(role: str) -> str:
    """"a client", "an admin": the refusals name who holds which key file."""
    return ("an " if role[0] in "aeiou" else "a ") + role


def tls_failure(exc: ssl.SSLError) -> str:
    """Why a TLS handshake failed, as an operator can act on it: the certificate check's
    own words ("certificate has expired", "IP address mismatch, certificate is not valid
    for '10.0.0.3'", "self-signed certificate") rather than CERTIFICATE_VERIFY_FAILED."""
    why = getattr(exc, "verify_message", None)
    return f"{exc.reason or exc}: {why}" if why else str(exc.reason or exc)
