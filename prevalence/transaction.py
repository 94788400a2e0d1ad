"""What the application writes: transactions (journaled) and queries (never journaled)."""
from __future__ import annotations

import random as _random
from datetime import datetime, timedelta, timezone
from typing import Any

from .codec import CODEC

__all__ = ["Transaction", "Query", "Context"]


def _register(cls: type, name: str | None, version: int) -> None:
    if not isinstance(version, int) or version < 1:
        raise TypeError(f"{cls.__qualname__}: version must be an int >= 1, got {version!r}")
    cls.__prevalence_name__ = name or f"{cls.__module__}.{cls.__qualname__}"  # type: ignore[attr-defined]
    cls.__prevalence_version__ = version  # type: ignore[attr-defined]
    CODEC.register(cls)


class Transaction:
    """A change to the root. Subclass it as a frozen dataclass or attrs class.

    ``class Deposit(Transaction, name="bank.Deposit", version=2)`` overrides the stable
    type name (default: module and qualified name) and declares a schema version; a class
    that reads older versions defines ``upgrade(cls, fields: dict, version: int) -> dict``.

    ``check(root)`` runs first and rejects by raising: nothing is journaled. ``execute``
    runs after the entry is journaled; if it raises, the exception reaches the caller, and
    whatever it changed before raising stays changed (and replays identically), so do the
    validation in ``check`` and keep ``execute`` to the changes.
    """

    __slots__ = ()

    def __init_subclass__(cls, *, name: str | None = None, version: int = 1, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        _register(cls, name, version)

    def check(self, root: Any) -> None:
        """Raise to reject the transaction before anything is journaled."""

    def execute(self, root: Any, ctx: "Context") -> Any:
        raise NotImplementedError(f"{type(self).__qualname__} must define execute(root, ctx)")


class Query:
    """A read of the root: ``run(root)``. Queries run together, never during a transaction."""

    __slots__ = ()

    def __init_subclass__(cls, *, name: str | None = None, version: int = 1, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        _register(cls, name, version)

    def run(self, root: Any) -> Any:
        raise NotImplementedError(f"{type(self).__qualname__} must define run(root)")


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Context:
    """What a transaction may know besides the root, identical on every replay.

    ``now`` is the time stamped into the journal entry when it was created (UTC, never
    decreasing), ``random`` is seeded from the entry, ``index`` is the entry's index.
    """

    __slots__ = ("index", "timestamp_us", "_random")

    def __init__(self, index: int, timestamp_us: int):
        self.index = index
        self.timestamp_us = timestamp_us
        self._random: _random.Random | None = None

    @property
    def now(self) -> datetime:
        # Integer arithmetic from the epoch: exact to the microsecond on every platform.
        return _EPOCH + timedelta(microseconds=self.timestamp_us)

    @property
    def random(self) -> _random.Random:
        if self._random is None:
            self._random = _random.Random((self.index << 64) | self.timestamp_us)
        return self._random

    def __repr__(self) -> str:
        return f"Context(index={self.index}, now={self.now.isoformat()})"
