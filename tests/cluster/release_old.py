"""The application as an older release has it: ``upgrade.Label`` version 1, no
``upgrade.Unlabel`` (see release_new; never import both in one process)."""
from __future__ import annotations

from dataclasses import dataclass

import prevalence


@dataclass(frozen=True)
class Label(prevalence.Transaction, name="upgrade.Label", version=1):
    key: str

    def execute(self, root, ctx: prevalence.Context) -> int:
        root.values[self.key] = 1
        return 1
