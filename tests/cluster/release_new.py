"""The application as the newer release has it: ``upgrade.Label`` version 2 (with a
value) and a new class ``upgrade.Unlabel``, neither readable by release_old."""
from __future__ import annotations

from dataclasses import dataclass

import prevalence


@dataclass(frozen=True)
class Label(prevalence.Transaction, name="upgrade.Label", version=2):
    key: str
    value: int = 1

    @classmethod
    def upgrade(cls, fields: dict, version: int) -> dict:
        return {**fields, "value": 1}

    def execute(self, root, ctx: prevalence.Context) -> int:
        root.values[self.key] = self.value
        return self.value


@dataclass(frozen=True)
class Unlabel(prevalence.Transaction, name="upgrade.Unlabel"):
    key: str

    def execute(self, root, ctx: prevalence.Context) -> None:
        root.values.pop(self.key, None)
