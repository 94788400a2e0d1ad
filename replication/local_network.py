"""An in-process transport between nodes, for tests and single-machine experiments.

Apart from :mod:`replication.node` because a node takes any transport and needs none
in particular; a process's nodes talk through ``rpc.transport``.
"""
from __future__ import annotations

from typing import Protocol

__all__ = ["LocalNetwork"]


class Receiver(Protocol):
    def receive(self, payload: bytes, sender: str | None = None) -> None: ...


class LocalNetwork:
    """``nodes``: who is reachable by id; ``cut``: the (from, to) links that drop
    every message."""

    def __init__(self) -> None:
        self.nodes: dict[str, Receiver] = {}
        self.cut: set[tuple[str, str]] = set()

    def transport(self, src: str) -> "LocalNetwork._Port":
        return LocalNetwork._Port(self, src)

    class _Port:
        def __init__(self, net: "LocalNetwork", src: str):
            self.net, self.src = net, src

        def send(self, to: str, payload: bytes) -> None:
            node = self.net.nodes.get(to)
            if node is not None and (self.src, to) not in self.net.cut:
                node.receive(payload, self.src)
