"""What the operator window says when the master is lost and no new one can be elected,
and when no node gives its status: against nodes whose status replies are scripted
(app.ui.session.MasterWatch feeding app.ui.model.Board), as a real cluster would answer."""
from __future__ import annotations

import sys

import pytest

from app.ui.model import Board
from app.ui.session import MasterWatch
from rpc.auth import AuthenticationFailed, ConnectFailed

THREE = ["n1", "n2", "n3"]
ADDRESS = {n: f"127.0.0.1:{7100 + int(n[1:])}" for n in THREE}



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


def test_nodes_that_refuse_the_windows_key_are_not_shown_as_silent(replies):
    """Before, a window started with the wrong client.secret said "Cluster unreachable:
    no node answers (3 tried)": the nodes were up, answering, and refusing the key."""
    for nid in THREE:
        replies[ADDRESS[nid]] = AuthenticationFailed(
            f"{ADDRESS[nid]} refused our authentication: authentication failed (wrong key? a client uses the "
            "cluster's client.secret)", address=ADDRESS[nid], key_refused=True)
    watch, board = MasterWatch(list(ADDRESS.values()), b"k" * 32), Board()
    try:
        header = checked(watch, board, 1).header
    finally:
        watch.close()
    assert header.state == "unreachable" and "no node answers" not in header.text, header.text
    assert "refused our authentication" in header.text and "wrong key" in header.text, header.text
    assert "3 tried" in header.text and len(header.text) < 300, header.text


def test_an_unreachable_cluster_says_why_its_nodes_give_no_status(replies):
    replies.update({ADDRESS["n1"]: refused("n1"), ADDRESS["n2"]: refused("n2"),
                    ADDRESS["n3"]: ConnectFailed(f"{ADDRESS['n3']}: handshake not answered within 0.5 s (not a node "
                                                 "of this cluster, or hung)", address=ADDRESS["n3"])})
    watch, board = MasterWatch(list(ADDRESS.values()), b"k" * 32), Board()
    try:
        header = checked(watch, board, 1).header
    finally:
        watch.close()
    assert header.state == "unreachable", header
    assert "Connection refused" in header.text and "handshake not answered" in header.text, header.text


def test_a_removed_node_that_still_runs_does_not_count_as_a_voter(replies):
    """Before, n1 removed from the membership but running (it names the old voters, in
    the same term) and master n2 dead: the window counted n1 and n3 as "2 of 3 voters"
    and said an election was running; the voters are n2 and n3, and one cannot elect."""
    def st(nid: str, voters: list[str], commit: int) -> list:
        reply = status(nid, "pre_candidate")
        reply[1].update(voters=voters, commit_index=commit)
        return reply

    replies.update({ADDRESS["n1"]: st("n1", THREE, 10), ADDRESS["n2"]: refused("n2"),
                    ADDRESS["n3"]: st("n3", ["n2", "n3"], 12)})
    watch, board = MasterWatch(list(ADDRESS.values()), b"k" * 32), Board()
    try:
        header = checked(watch, board, 1).header
    finally:
        watch.close()
    assert header.text == "No master: only 1 of 2 voters answer, a master needs 2", header.text


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")
def test_real_nodes_master_and_another_killed_the_window_says_no_master_and_why(tmp_path):
    """The same as the first tests, against three node processes: SIGKILL the master and
    a follower; the header says no master can be elected, the dead follower's tile why."""
    import time

    from tests.cluster.harness import LocalCluster

    c = LocalCluster(tmp_path, 3)
    watch = None
    try:
        leader = c.leader(timeout=30)
        other = next(n for n in sorted(c.configs) if n != leader)
        alive = next(n for n in sorted(c.configs) if n not in (leader, other))
        watch, board = MasterWatch(list(c.addresses.values()), c.secret), Board()
        board.apply(("view", {**grid_view(), "nodes": [{**n, "address": c.addresses[n["id"]]}
                                                      for n in grid_view()["nodes"]]}))
        deadline = time.monotonic() + 20
        while board.screen().header.state != "connected" and time.monotonic() < deadline:
            board.apply(("link", watch.check()))
        assert board.screen().header.text.startswith(f"Connected · master {leader}")
        c.kill(leader)
        c.kill(other)
        deadline = time.monotonic() + 20
        while board.screen().header.state != "no_master" and time.monotonic() < deadline:
            board.apply(("link", watch.check()))
            time.sleep(0.1)
        screen = board.screen()
        assert screen.header.text == (f"No master: master {leader} lost, and only 1 of 3 voters answer, "
                                      "a master needs 2"), screen.header.text
        tiles = {t.id: t for t in screen.tiles}
        assert tiles[other].state == "down" and tiles[other].detail.startswith("not answering"), tiles[other]
        assert tiles[leader].state == "down" and tiles[alive].state == "in_sync"
        checked(watch, board, 2)  # its open connection was lost; asked again, nothing listens
        assert "connection refused" in {t.id: t for t in board.screen().tiles}[other].detail.lower()
    finally:
        if watch is not None:
            watch.close()
        c.stop()


def test_while_there_is_no_master_a_node_recorded_down_that_answers_is_not_shown_down(watched, replies):
    """Before: n2, recorded down by the last master, came back while no master could be
    elected; it answered the window, yet its tile kept "down · since ... connection
    refused", a reason that was no longer true."""
    watch, board = watched
    view = grid_view()
    view["nodes"][1].update(health="down", since="2026-11-30T08:00:00+00:00", in_sync=False, actual=None,
                            detail="agent n2: cannot connect: Connection refused")
    board.apply(("view", view))
    replies.update({ADDRESS["n1"]: refused("n1"), ADDRESS["n2"]: status("n2", "pre_candidate"),
                    ADDRESS["n3"]: refused("n3")})
    tile = {t.id: t for t in checked(watch, board).tiles}["n2"]
    assert tile.state != "down" and "answers" in tile.words, tile
    assert "recorded down" in tile.detail and "Connection refused" not in tile.detail, tile


class NoMasterClient:
    """A client of a cluster without a master: linearizable reads fail, a node's own copy
    answers (what rpc.ClusterClient does then)."""

    addresses = list(ADDRESS.values())

    def query(self, q, consistency="linearizable", *, timeout=None):
        from rpc.client import ClusterUnavailable

        if consistency != "local":
            raise ClusterUnavailable("no leader answered")
        return grid_view()

    def status(self, *, timeout=None):
        return {"applied_index": 1}

    def subscribe(self, callback, from_index=None):
        class Closing:
            def close(self):
                pass
        return Closing()

    def close(self):
        pass


def test_a_window_opened_while_there_is_no_master_shows_the_nodes(replies):
    """Before, a window opened during an outage with no master showed an empty board:
    the grid is only read from a master, so not even where the nodes are, or which of
    them answer, could be seen."""
    import time

    from app.ui.session import UiSession

    replies.update({ADDRESS["n1"]: refused("n1"), ADDRESS["n2"]: refused("n2"),
                    ADDRESS["n3"]: status("n3", "pre_candidate")})
    session, board = UiSession(NoMasterClient(), b"k" * 32).start(), Board()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (board.view and board.screen().header.state == "no_master"):
            try:
                board.apply(session.updates.get(timeout=0.2))
            except Exception:  # noqa: BLE001 - queue.Empty: nothing yet
                pass
    finally:
        session.close()
    screen = board.screen()
    assert screen.header.state == "no_master" and len(screen.tiles) == 3, screen
    tiles = {t.id: t for t in screen.tiles}
    assert tiles["n1"].state == "down" and tiles["n3"].state == "in_sync", tiles


def test_the_lost_masters_tile_keeps_saying_why_it_does_not_answer(watched, replies):
    """Before, the lost master's tile said "stopped answering: connection refused" for
    one check, then only "stopped answering", while no new master was elected."""
    import time

    watch, board = watched
    replies.update({ADDRESS["n1"]: refused("n1"), ADDRESS["n2"]: refused("n2"),
                    ADDRESS["n3"]: status("n3", "pre_candidate")})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the old master is asked again, off the watch's thread
        tile = {t.id: t for t in checked(watch, board, 1).tiles}["n1"]
        if "refused" in tile.detail.lower() and board.link.state == "searching":
            break
        time.sleep(0.05)
    assert tile.state == "down" and "connection refused" in tile.detail.lower(), tile


def test_a_master_only_this_window_cannot_reach_is_not_called_a_failover(watched, replies):
    """Before: the window's link to master n1 cut (a firewall, a route on the operator's
    side) while n1 led the others as before: "Failover in progress ... waiting for a new
    master · 2 of 3 voters answer" for as long as it lasted, though n2 and n3 said they
    follow n1 and no election was under way; n1's tile was shown down."""
    import time

    watch, board = watched
    replies.update({ADDRESS["n1"]: ConnectFailed(f"{ADDRESS['n1']}: handshake not answered within 0.5 s (not a "
                                                 "node of this cluster, or hung)", address=ADDRESS["n1"])})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        header = checked(watch, board, 1).header
        if board.link.state == "searching" and "handshake" in header.text:
            break
        time.sleep(0.05)
    assert "waiting for a new master" not in header.text and "election" not in header.text, header.text
    assert "n1 does not answer this window" in header.text and "follow it (term 3)" in header.text, header.text
    assert "handshake not answered" in header.text, header.text
    tile = {t.id: t for t in board.screen().tiles}["n1"]
    assert tile.state != "down" and "does not answer this window" in tile.detail, tile
    replies[ADDRESS["n1"]] = status("n1", "leader")
    assert checked(watch, board, 4).header.state == "connected"


@pytest.mark.slow
def test_real_nodes_the_windows_link_to_the_master_cut_is_not_called_a_failover(tmp_path):
    """The same as above against three node processes, the window reaching the master
    through a proxy that drops everything once cut (no reset, as a dead route)."""
    import time

    from tests.cluster.harness import LocalCluster
    from tests.cluster.proxy import LinkProxy

    c = LocalCluster(tmp_path, 3)
    watch = proxy = None
    try:
        leader = c.leader(timeout=30)
        proxy = LinkProxy(c.configs[leader].address)
        addresses = [f"127.0.0.1:{proxy.address[1]}" if n == leader else a for n, a in c.addresses.items()]
        watch, board = MasterWatch(addresses, c.secret), Board()
        deadline = time.monotonic() + 20
        while board.screen().header.state != "connected" and time.monotonic() < deadline:
            board.apply(("link", watch.check()))
        proxy.cut = True
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (board.link.state == "searching" and board.link.followed):
            board.apply(("link", watch.check()))
            time.sleep(0.1)
        text = board.screen().header.text
        assert text.startswith(f"Master {leader} does not answer this window") and "follow it" in text, text
        assert c.status()[leader]["role"] == "leader"  # it does lead: no failover was to be announced
    finally:
        if watch is not None:
            watch.close()
        if proxy is not None:
            proxy.close()
        c.stop()


def test_while_there_is_no_master_no_tile_says_its_settings_are_being_restored(watched, replies):
    """Before: with no master to push anything, a node whose settings differ was shown
    "up · restoring desired settings…" (the master pushing them) for 5 s after the
    window saw it differ."""
    watch, board = watched
    view = grid_view()
    view["nodes"][2].update(desired={"volume": 40}, actual={"volume": 10}, in_sync=False)
    board.apply(("view", view))
    assert {t.id: t for t in board.screen().tiles}["n3"].state == "restoring"  # a master is pushing
    replies.update({ADDRESS["n1"]: refused("n1"), ADDRESS["n2"]: refused("n2"),
                    ADDRESS["n3"]: status("n3", "pre_candidate")})
    tile = {t.id: t for t in checked(watch, board).tiles}["n3"]
    assert tile.state == "drifting" and "restoring" not in tile.words, tile
