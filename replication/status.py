"""A snapshot of a node's Raft state for operators (``prevalence status``)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class PeerStatus:
    match: int
    next: int
    state: str
    recent_active: bool
    learner: bool
    inflight: int


@dataclass(slots=True)
class Status:
    id: str
    role: str
    term: int
    vote: str | None
    leader: str | None
    commit: int
    applied: int
    first_index: int
    last_index: int
    voters: tuple
    learners: tuple
    lead_transferee: str | None
    progress: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__slots__ if k != "progress"}
        d["voters"], d["learners"] = list(self.voters), list(self.learners)
        d["progress"] = {p: {k: getattr(s, k) for k in s.__slots__} for p, s in self.progress.items()}
        return d
