"""An operator's shift with faults: what the grid does with an operator's change made
while part of it is down, and whether it says truthfully what happened."""
from __future__ import annotations

import sys
import threading
import time

import pytest

from app.layout import LayoutWatcher, parse_layout
from app.model import RefuseLayout, SetSettings
from app.node import GridApp
from rpc.config import format_address
from rpc.localcluster import LocalCluster
from rpc.subscription import ClusterUnavailable
from tests.app.gridproc import running_grid
from tests.app.test_layout import GOOD


class _NoMasterFor:
    """A cluster that has no master for its first ``n`` commands, then applies them."""

    def __init__(self, n: int):
        self.n, self.sent, self.applied = n, [], threading.Event()

    def execute(self, tx, timeout=None):
        self.sent.append(tx)
        if len(self.sent) <= self.n:
            raise ClusterUnavailable("register_session: no leader answered within the deadline")
        if isinstance(tx, RefuseLayout):
            return None
        self.applied.set()
        return {"added": [], "removed": [], "changed": ["n2"]}



def _watching(path, cluster) -> LayoutWatcher:
    """Node n1's layout watcher on ``path``, sending through ``cluster``, started from GOOD."""
    app = GridApp.__new__(GridApp)
    app.layout_path = str(path)
    app._cluster = lambda: cluster
    app.process = type("P", (), {"cfg": type("C", (), {"id": "n1"})})()
    return LayoutWatcher(str(path), app._submit_layout, app._refuse_layout, debounce=0.05).start(
        parse_layout(GOOD).digest)

def test_a_layout_edit_saved_while_no_master_answers_is_applied_once_one_does(tmp_path):
    path = tmp_path / "layout.toml"
    path.write_bytes(GOOD)
    cluster = _NoMasterFor(2)
    watcher = _watching(path, cluster)
    try:
        edit = GOOD.replace(b"rows = 2", b"rows = 3")
        path.write_bytes(edit)
        assert cluster.applied.wait(12), f"the edit was never applied; sent: {cluster.sent}"
        time.sleep(0.3)
    finally:
        watcher.close()
    # no refusal recorded: the edit was valid, only undelivered for a while
    assert not [tx for tx in cluster.sent if isinstance(tx, RefuseLayout)], cluster.sent
    assert {tx.digest for tx in cluster.sent} == {parse_layout(edit).digest}


def _client_of(g, *ids):
    from rpc.client import ClusterClient
    from rpc.config import format_address

    return ClusterClient([format_address(g.configs[i].listen) for i in ids], g.secret, timeout=20.0)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX node processes, as the other grid tests")
def test_after_grid_recover_the_old_nodes_master_cannot_override_the_new_masters_settings(tmp_path):
    """grid recover made n1 the one voter of a new epoch; n2 and n3 come back with data of
    the old epoch (their PCs' services start them) and elect a master of their own, whose
    state still asks for volume 99. The agents must run what the recovered grid's master
    says, not flip between the two masters; and the old master takes no command once n1
    has dialled its nodes (rpc.epochs), even from a program given no epoch."""
    from app.agent import AgentLink
    from app.cli import main
    from app.local import grid_view
    from prevalence.errors import PrevalenceError

    with running_grid(str(tmp_path), 1, 3) as g:
        with _client_of(g, "n1", "n2", "n3") as before:
            before.execute(SetSettings(("all",), {"volume": "99"}))
        g.wait_converged()
        g.stop()
        assert main(["recover", "--survivor", "n1", "--cluster", str(tmp_path)]) == 0
        g.start()  # n1 (grid up holds n2 and n3 back); their PCs' services start them with their old data:
        for nid in ("n2", "n3"):
            LocalCluster.start(g, nid)
        new, old = _client_of(g, "n1"), _client_of(g, "n2", "n3")
        agent = AgentLink("n3", format_address(g.configs["n3"].listen), g.secret)
        try:
            new.execute(SetSettings(("all",), {"volume": "20"}))

            def refused() -> bool:
                try:
                    old.execute(SetSettings(("all",), {"volume": "98"}), timeout=2.0)
                except PrevalenceError as exc:
                    return "the cluster was recovered into epoch 1" in str(exc)
                return False
            g.wait_for("the old nodes to refuse commands", refused, 30)
            g.wait_for("n3's agent runs the new master's settings", lambda: agent.status()["settings"] == {"volume": 20}, 30)
            seen = set()
            for _ in range(20):  # both controllers cycle every 0.5 s
                seen.add(agent.status()["settings"].get("volume"))
                time.sleep(0.1)
            assert seen == {20}, f"n3's agent ran volume {sorted(seen)}: the old epoch's master pushed to it"
            assert grid_view(new)["nodes"][2]["desired"] == {"volume": 20}
        finally:
            agent.close()
            new.close()
            old.close()


def test_an_agent_refuses_a_push_from_an_older_master_and_says_why():
    import msgpack

    from app.agent import Agent

    agent, handlers = Agent("n3"), {}
    agent.register(handlers)

    def push(volume, epoch, term):
        return handlers["agent.apply_fenced"](msgpack.packb({"settings": {"volume": volume}, "epoch": epoch,
                                                              "term": term}))

    push(20, 1, 4)
    with pytest.raises(Exception, match=r"superseded: agent n3 takes its settings from a master of epoch 1, term 4"):
        push(99, 0, 9)  # a master left in the old epoch, whatever its term
    push(30, 1, 5)  # the next master
    assert agent.settings == {"volume": 30}
    for hostile in (b"\xc1", msgpack.packb([1]), msgpack.packb({"settings": {}, "epoch": -1, "term": 0}),
                    msgpack.packb({"settings": {}, "epoch": True, "term": 0}),
                    msgpack.packb({"settings": [], "epoch": 2, "term": 0})):
        with pytest.raises(Exception, match="fenced push|not valid msgpack|settings must be a map"):
            handlers["agent.apply_fenced"](hostile)
    assert agent.settings == {"volume": 30} and agent.fence == (1, 5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the writer's close is seen through inotify")
def test_a_layout_file_saved_in_two_writes_is_applied_whole_not_half_written(tmp_path):
    """A slow save (a network share, an editor that stalls) paused after the first nodes:
    the half-written file is valid TOML with fewer nodes, and applying it removed the
    others and their desired settings, which the grid then pushed away from their agents."""
    path = tmp_path / "layout.toml"
    path.write_bytes(GOOD)
    layouts, errors, whole = [], [], threading.Event()
    edit = GOOD.replace(b"rows = 2", b"rows = 3")

    def on_layout(layout):
        layouts.append(layout)
        if len(layout.nodes) == 2:
            whole.set()

    watcher = LayoutWatcher(str(path), on_layout, lambda m, d: errors.append(m), debounce=0.05).start(
        parse_layout(GOOD).digest)
    try:
        cut = edit.index(b"[nodes.b]")
        with open(path, "wb") as f:
            f.write(edit[:cut])
            f.flush()
            time.sleep(0.6)  # far longer than the debounce
            f.write(edit[cut:])
        assert whole.wait(15), f"the whole file was never applied: {layouts} {errors}"
        time.sleep(0.3)
    finally:
        watcher.close()
    assert [len(layout.nodes) for layout in layouts] == [2], "a half-written layout was applied"
    assert not errors


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX node processes, as the other grid tests")
def test_after_grid_recover_grid_up_holds_the_old_nodes_back_and_grid_replace_makes_them_voters(tmp_path):
    """Started together, n2 and n3 (old epoch) elect a master of their own, which then
    acknowledges grid commands that the recovered grid never sees. The runbook's next
    step, grid replace, must give the grid its voters back: left learners, the grid has
    one voter, and losing n1 would stop it for good."""
    import os
    import signal
    import subprocess

    from app.cli import main
    from app.replace import replace_node
    from rpc.cluster import cluster_status_full
    from prevalence._platform import DirectoryLock

    with running_grid(str(tmp_path), 1, 3) as g:
        g.stop()
    assert main(["recover", "--survivor", "n1", "--cluster", str(tmp_path)]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    up = subprocess.Popen([sys.executable, "-m", "app", "up", "--data", str(tmp_path)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert g.leader(timeout=30) == "n1"
        time.sleep(4)  # longer than grid up's restart delay: a held node is not restarted either
        for nid in ("n2", "n3"):
            lock = DirectoryLock(g.configs[nid].data)
            lock.acquire()  # free: no process runs on its data
            lock.release()
        said: list[str] = []
        replace_node(str(tmp_path), "n2", g.addresses["n2"], timeout=60, progress=said.append)
        def voters():
            return next((r["voters"] for r in cluster_status_full(str(tmp_path)) if r["role"] == "leader"), None)
        assert "n2" in g.wait_for("a leader's voters", voters, 10), said
    finally:
        up.send_signal(signal.SIGTERM)
        out = up.communicate(timeout=30)[0]
    for nid in ("n2", "n3"):
        assert f"{nid} not started: its data is of epoch 0, from before grid recover made epoch 1; grid replace " \
               f"{nid} --address {g.addresses[nid]}" in out, out
    assert "restarting" not in out and "Traceback" not in out, out
    assert f"1 node on {g.addresses['n1']} (2 held back: n2, n3)" in out, out  # not "3 nodes"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX node processes, as the other grid tests")
def test_an_agent_that_answers_slowly_is_up_when_down_after_allows_its_delay(tmp_path):
    """docs/operations.md: on a LAN where a PC can stall, raise down_after (2..3 s) so
    that a slow answer is not reported as a failure. n3's agent answers in 1.3 s."""
    from app.local import LocalGrid, grid_view, write_grid

    write_grid(str(tmp_path), 1, 3, plugin="tests.app.slow_agent:attach", down_after=3.0)
    g = LocalGrid.open(str(tmp_path))
    g.start()
    c = g.client(timeout=20.0)
    try:
        g.wait_for("the layout", lambda: grid_view(c)["layout_digest"], 30)
        c.execute(SetSettings(("all",), {"volume": "4"}))
        time.sleep(5)  # down_after and more: a node it would call down is down by now
        n3 = {n["id"]: n for n in grid_view(c)["nodes"]}["n3"]
        assert (n3["health"], n3["in_sync"]) == ("up", True), n3
    finally:
        c.close()
        g.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a close after writing is seen through inotify")
def test_a_pcs_outdated_layout_copy_opened_for_writing_unchanged_does_not_undo_the_grids_layout(tmp_path):
    """The copies on the PCs are not synchronised: this PC's copy is older than the layout
    the grid applied (edited elsewhere). A backup tool or an editor that opens it for
    writing and closes it unchanged is no edit: the grid must not go back to that copy."""
    path = tmp_path / "layout.toml"
    path.write_bytes(GOOD)  # this PC's copy, older than the grid's layout

    class Process:
        class cfg:
            id = "n1"
        handlers: dict = {}
        leader_hooks: list = []

    Process.cfg.path = str(tmp_path / "n1.toml")
    cluster = _NoMasterFor(0)
    app = GridApp(Process(), {"layout": "layout.toml"})
    app._cluster = lambda: cluster
    try:
        time.sleep(0.3)  # the watcher runs
        with open(path, "ab"):
            pass  # opened for writing, closed unchanged
        time.sleep(1.5)
    finally:
        app.close()
    assert cluster.sent == [], "the grid was sent this PC's unchanged, outdated copy"


def test_a_layout_saved_while_the_previous_save_is_still_being_sent_ends_as_the_grids_layout(tmp_path):
    """Save X while no master answers (its send waits), then save Y: when the master
    answers, the grid must end with Y, the file's content, not with X sent last."""
    path = tmp_path / "layout.toml"
    path.write_bytes(GOOD)
    x, y = GOOD.replace(b"rows = 2", b"rows = 3"), GOOD.replace(b"rows = 2", b"rows = 4")
    release, sending, taken = threading.Event(), threading.Event(), []

    def on_layout(layout):
        if layout.rows == 3:  # X's send: no master yet
            sending.set()
            release.wait(10)
        taken.append(layout.rows)

    watcher = LayoutWatcher(str(path), on_layout, lambda m, d: None, debounce=0.05).start(parse_layout(GOOD).digest)
    try:
        path.write_bytes(x)
        assert sending.wait(5)
        path.write_bytes(y)
        time.sleep(0.5)  # Y's check is due meanwhile
        release.set()
        deadline = time.monotonic() + 5
        while len(taken) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.close()
    assert taken[-1:] == [4], f"the grid took {taken} (rows), last not the file's content"


def test_a_refused_layout_edit_saved_while_no_master_answers_is_shown_once_one_does(tmp_path):
    """The refusal goes into the replicated state for grid show and the window; with no
    master it was only logged on that node, and grid show never said the file was refused."""
    path = tmp_path / "layout.toml"
    path.write_bytes(GOOD)
    cluster = _NoMasterFor(1)
    recorded = threading.Event()
    execute = cluster.execute

    def execute_and_note(tx, timeout=None):
        result = execute(tx, timeout)
        if isinstance(tx, RefuseLayout):
            recorded.set()
        return result
    cluster.execute = execute_and_note
    watcher = _watching(path, cluster)
    try:
        path.write_bytes(GOOD.replace(b"row = 2\n", b"row = 3\n"))  # outside the 2x2 grid
        assert recorded.wait(10), f"the refusal was never recorded; sent: {cluster.sent}"
    finally:
        watcher.close()
    assert "outside the 2x2 grid" in cluster.sent[-1].reason
