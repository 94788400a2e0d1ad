"""The simulated network: loss, duplication, delay/reordering, partitions, clogs.

All decisions come from the simulation's one ``random.Random``; links are keyed by
(src, dst) string pairs and iterated in sorted order, so runs replay exactly.
"""
from __future__ import annotations

import random


class Network:
    def __init__(self, rng: random.Random, node_ids: list[str]) -> None:
        self.rng = rng
        self.ids = list(node_ids)
        self.loss = 0.0
        self.dup = 0.0
        self.delay = (1, 20)  # in time units (100 units = one base tick)
        self.long_delay_p = 0.0  # probability of a long delay (reordering)
        self.long_delay = (50, 400)
        self.cut: set[tuple[str, str]] = set()  # one-way cuts src -> dst
        self.clogged: dict[tuple[str, str], int] = {}  # link -> held until this time

    # ---------------------------------------------------------------- faults
    def heal(self) -> None:
        self.loss = self.dup = self.long_delay_p = 0.0
        self.cut.clear()
        self.clogged.clear()

    def partition(self, group: list[str]) -> None:
        """Symmetric partition: ``group`` cannot talk to the rest, nor the rest to it."""
        g = set(group)
        for a in self.ids:
            for b in self.ids:
                if a != b and ((a in g) != (b in g)):
                    self.cut.add((a, b))

    def cut_one_way(self, src: str, dst: str) -> None:
        self.cut.add((src, dst))

    def isolate(self, node: str) -> None:
        self.partition([node])

    def clog(self, src: str, dst: str, until: int) -> None:
        self.clogged[(src, dst)] = until

    def describe(self) -> str:
        parts = []
        if self.cut:
            parts.append("cut=" + ",".join(f"{a}>{b}" for a, b in sorted(self.cut)))
        if self.clogged:
            parts.append("clogged=" + ",".join(f"{a}>{b}@{t}" for (a, b), t in sorted(self.clogged.items())))
        parts.append(f"loss={self.loss:.2f} dup={self.dup:.2f} long={self.long_delay_p:.2f}")
        return " ".join(parts)

    # ---------------------------------------------------------------- delivery
    def deliveries(self, now: int, src: str, dst: str) -> list[int]:
        """Delivery times for one message sent now (empty: lost; two: duplicated)."""
        rng = self.rng
        if (src, dst) in self.cut:
            return []
        if self.loss and rng.random() < self.loss:
            return []
        copies = 2 if self.dup and rng.random() < self.dup else 1
        times = []
        for _ in range(copies):
            if self.long_delay_p and rng.random() < self.long_delay_p:
                d = rng.randint(*self.long_delay)
            else:
                d = rng.randint(*self.delay)
            t = now + d
            held = self.clogged.get((src, dst))
            if held is not None and held > t:
                t = held + rng.randint(0, 5)
            times.append(t)
        return times
