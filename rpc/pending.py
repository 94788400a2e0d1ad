"""Connections still in their handshake, counted per source address.

One host that opens connections and never authenticates held every slot of a node's
listener (128) for as long as it kept going: no node reconnected, no client got in. Now a
source address holds at most ``limit`` connections in their handshake, and the listener's
other slots stay open to the rest. Loopback is exempt: every program on the node's own PC
(a local cluster, tools) comes from it, and a party there has the PC anyway.
"""
from __future__ import annotations

import ipaddress
import threading

#: Connections one source address may hold in their handshake at once.
MAX_PENDING_PER_ADDRESS = 16


def source(host: str) -> str:
    """The address ``host`` counts as: an IPv4 address a dual-stack listener ("::") sees
    as ``::ffff:a.b.c.d`` is that IPv4 address, whichever form it came in."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else host


def exempt(host: str) -> bool:
    """True for a loopback address, IPv4-mapped or not (not limited per address)."""
    try:
        return ipaddress.ip_address(source(host).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class PendingHandshakes:
    """``admit`` a connection from ``host`` (counted until ``settled``) or refuse it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[str, int] = {}
        self._of: dict[int, str] = {}  # id(socket) -> its address, until settled
        self._crowded: set[str] = set()  # at the limit: logged once per episode

    def admit(self, sock: object, host: str, limit: int, is_exempt=exempt) -> tuple[bool, bool]:
        """(admitted, say so now): refused when ``host`` has ``limit`` pending already;
        the second is True once per episode of refusals, for one log line."""
        if not host or is_exempt(host):
            return True, False
        host = source(host)
        with self._lock:
            if self._count.get(host, 0) >= limit:
                first = host not in self._crowded
                self._crowded.add(host)
                return False, first
            self._count[host] = self._count.get(host, 0) + 1
            self._of[id(sock)] = host
            return True, False

    def settled(self, sock: object, limit: int) -> None:
        """Its handshake ended (or never began): its address's slot is free again. Idempotent."""
        with self._lock:
            host = self._of.pop(id(sock), None)
            if host is None:
                return
            left = self._count.get(host, 0) - 1
            if left > 0:
                self._count[host] = left
            else:
                self._count.pop(host, None)
            if left < limit:
                self._crowded.discard(host)
