"""What the operator window says when the master is lost and no new one can be elected,
and when no node gives its status: against nodes whose status replies are scripted
(app.ui.session.MasterWatch feeding app.ui.model.Board), as a real cluster would answer."""
from __future__ import annotations

import pytest

from app.ui.model import Board
from app.ui.session import MasterWatch
from rpc.auth import AuthenticationFailed, ConnectFailed
from rpc.transport import NodeLink

THREE = ["n1", "n2", "n3"]
ADDRESS = {n: f"127.0.0.1:{7100 + int(n[1:])}" for n in THREE}


@pytest.fixture
def replies(monkeypatch):
    """address -> the reply its node gives to ``status`` (an exception is raised)."""
    by_address: dict[str, object] = {}

    def call(self, method, *args):
        reply = by_address[f"{self.address[0]}:{self.address[1]}"]
        if isinstance(reply, BaseException):
            raise reply
        return reply

    monkeypatch.setattr(NodeLink, "call", call)
    return by_address


def status(nid: str, role: str = "follower", term: int = 3, leader: str | None = None) -> list:
    return ["ok", {"id": nid, "role": role, "term": term, "leader": leader, "address": ADDRESS[nid],
                   "voters": list(THREE)}]


def refused(nid: str) -> ConnectFailed:
    return ConnectFailed(f"{ADDRESS[nid]}: cannot connect: Connection refused", address=ADDRESS[nid], refused=True)


def grid_view() -> dict:
    return {"rows": 1, "columns": 3, "presets": {}, "layout_refused": None,
            "nodes": [{"id": n, "address": ADDRESS[n], "row": 1, "column": k + 1, "desired": {}, "actual": {},
                       "health": "up", "since": None, "in_sync": True, "detail": ""}
                      for k, n in enumerate(THREE)]}


@pytest.fixture
def watched(replies):
    """A watch of the three nodes and the board it feeds, connected to master n1."""
    replies.update({ADDRESS["n1"]: status("n1", "leader"), ADDRESS["n2"]: status("n2", leader="n1"),
                    ADDRESS["n3"]: status("n3", leader="n1")})
    watch, board = MasterWatch(list(ADDRESS.values()), b"k" * 32), Board()
    board.apply(("view", grid_view()))
    board.apply(("link", watch.check()))
    assert board.screen().header.state == "connected"
    try:
        yield watch, board
    finally:
        watch.close()


def checked(watch: MasterWatch, board: Board, times: int = 3):
    for _ in range(times):
        board.apply(("link", watch.check()))
    return board.screen()


def test_a_master_lost_with_a_majority_says_no_master_can_be_elected(watched, replies):
    """Before, the master and another of three killed: "Failover in progress ... waiting
    for a new master · 1 of 3 nodes answer" for as long as it lasted, though no master
    could be elected."""
    watch, board = watched
    replies.update({ADDRESS["n1"]: refused("n1"), ADDRESS["n2"]: refused("n2"),
                    ADDRESS["n3"]: status("n3", "pre_candidate")})
    header = checked(watch, board).header
    assert header.state == "no_master", header
    assert "n1 lost" in header.text and "only 1 of 3 voters answer, a master needs 2" in header.text, header.text
    assert "waiting for a new master" not in header.text
    replies[ADDRESS["n2"]] = status("n2", "candidate", term=4)  # back: now one can be elected
    header = checked(watch, board).header
    assert header.state == "failover" and "2 of 3 voters answer" in header.text, header.text


def test_while_there_is_no_master_a_node_that_does_not_answer_is_not_shown_in_sync(watched, replies):
    """Before, with no master to record anything, n2 killed along with master n1 kept its
    tile "up · in sync" (the last state a master recorded) while the header said no
    master could be elected."""
    watch, board = watched
    replies.update({ADDRESS["n1"]: refused("n1"), ADDRESS["n2"]: refused("n2"),
                    ADDRESS["n3"]: status("n3", "pre_candidate")})
    tiles = {t.id: t for t in checked(watch, board).tiles}
    assert tiles["n2"].state == "down" and "connection refused" in tiles["n2"].detail.lower(), tiles["n2"]
    assert tiles["n1"].state == "down" and tiles["n3"].state == "in_sync"
    replies[ADDRESS["n2"]] = status("n2", "leader", term=4)  # back, and master
    tiles = {t.id: t for t in checked(watch, board).tiles}
    assert tiles["n2"].state == "in_sync" and tiles["n2"].master, tiles["n2"]
