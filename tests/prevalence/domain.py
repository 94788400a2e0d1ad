"""A small domain used across the engine tests: every Context feature leaves a trace."""
from __future__ import annotations

from dataclasses import dataclass, field

import prevalence


class Store:
    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.log: list[tuple] = []

    def state(self) -> tuple:
        return (dict(self.values), list(self.log))


class Boom(Exception):
    pass


class Rejected(Exception):
    pass


@dataclass(frozen=True)
class Put(prevalence.Transaction, name="test.Put"):
    key: str
    value: int

    def execute(self, root: Store, ctx: prevalence.Context) -> int:
        root.values[self.key] = self.value
        return self.value


@dataclass(frozen=True)
class Add(prevalence.Transaction, name="test.Add"):
    key: str
    amount: int

    def check(self, root: Store) -> None:
        if self.amount < 0 and root.values.get(self.key, 0) + self.amount < 0:
            raise Rejected(f"{self.key} would go negative")

    def execute(self, root: Store, ctx: prevalence.Context) -> int:
        root.values[self.key] = root.values.get(self.key, 0) + self.amount
        return root.values[self.key]


@dataclass(frozen=True)
class Stamp(prevalence.Transaction, name="test.Stamp"):
    """Records what the context said, so replay can be compared exactly."""

    tag: str

    def execute(self, root: Store, ctx: prevalence.Context) -> tuple:
        item = (self.tag, ctx.index, ctx.now.isoformat(), ctx.random.random())
        root.log.append(item)
        return item


@dataclass(frozen=True)
class HalfThenFail(prevalence.Transaction, name="test.HalfThenFail"):
    """Changes the root, then raises: the change must stay and replay identically."""

    key: str

    def execute(self, root: Store, ctx: prevalence.Context) -> None:
        root.values[self.key] = root.values.get(self.key, 0) + 1
        raise Boom(f"after touching {self.key}")


@dataclass(frozen=True)
class Tags(prevalence.Transaction, name="test.Tags"):
    key: str
    tags: tuple[str, ...] = ()
    meta: dict[str, int] = field(default_factory=dict)
    blob: bytes = b""
    ratio: float = 0.0
    flag: bool = False
    note: str | None = None

    def execute(self, root: Store, ctx: prevalence.Context) -> None:
        root.log.append((self.key, self.tags, tuple(sorted(self.meta.items())), self.blob, self.ratio, self.flag, self.note))


@dataclass(frozen=True)
class Get(prevalence.Query, name="test.Get"):
    key: str

    def run(self, root: Store) -> int | None:
        return root.values.get(self.key)


@dataclass(frozen=True)
class Snapshot(prevalence.Query, name="test.State"):
    def run(self, root: Store) -> tuple:
        return root.state()
