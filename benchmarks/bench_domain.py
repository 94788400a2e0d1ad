"""The benchmarks' domain, in a module of its own so that snapshots refer to it by name."""
from __future__ import annotations

from dataclasses import dataclass

import prevalence


class Bank:
    def __init__(self) -> None:
        self.accounts: dict[str, int] = {}


@dataclass(frozen=True)
class Deposit(prevalence.Transaction, name="bench.Deposit"):
    account: str
    amount: int

    def execute(self, root: Bank, ctx: prevalence.Context) -> int:
        root.accounts[self.account] = root.accounts.get(self.account, 0) + self.amount
        return root.accounts[self.account]


class Item:
    __slots__ = ("id", "name", "tags")

    def __init__(self, i: int) -> None:
        self.id = i
        self.name = f"item-{i}"
        self.tags = (i % 7, i % 11)

    def __getstate__(self):
        return (self.id, self.name, self.tags)

    def __setstate__(self, state):
        self.id, self.name, self.tags = state


class Catalog(Bank):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.items = {i: Item(i) for i in range(n)}
