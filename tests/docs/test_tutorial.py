"""docs/tutorial.md, step by step, so that the tutorial cannot rot.

test_the_tutorial_runs_as_written runs every block of the tutorial, in order, as a
reader would: the commands in a shell from the repository root, the scripts with
python, the doctest with doctest; the quoted parts of examples/workorders.py are
checked to be its text and then run together. The other tests check what the text
claims, step by step.

The embedded steps (1-3) run in this process; steps 4-5 run `prevalence cluster up`,
`prevalence status` and real node processes with the tutorial's plugin, as the
tutorial tells a reader to. Everything imports the tutorial's own module,
examples/workorders.py.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib

import msgpack
import pytest

import prevalence
from prevalence.codec import CODEC
from prevalence.entry import EntryKind
from prevalence.journal import Journal
from prevalence.state import encode_command

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)


from rpc.cluster import free_port_block  # noqa: E402
from workorders import (  # noqa: E402  (examples/ is on the path, as the tutorial has the reader do)
    Assign, Board, BoardError, Close, CloseAllUnchecked, OpenOrder, Orders, Undispatched,
)


def prevalence_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """`prevalence ARGS` as the reader types it (the module behind the console script)."""
    return subprocess.run([sys.executable, "-m", "rpc.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env())


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (EXAMPLES, ROOT, env.get("PYTHONPATH")) if p)
    return env


# -- step 1: the root, a transaction, a query, embedded ----------------------------------------
def test_step1_embedded_and_recovered(tmp_path):
    with prevalence.open(str(tmp_path), Board) as db:
        order = db.execute(OpenOrder("replace the lobby lamp", priority=1))
        db.execute(Assign(order, "ada"))
        mine = db.query(Orders("assigned"))
        assert [o["title"] for o in mine] == ["replace the lobby lamp"] and order == 1
        before = db.query(Orders())
    with prevalence.open(str(tmp_path), Board) as db:  # "restart": rebuilt from the journal
        assert db.last_index == 2
        assert db.query(Orders()) == before  # the same ids, codes and times: replay is deterministic


def test_step1_the_script_twice(tmp_path):
    script = os.path.join(EXAMPLES, "workorders.py")
    runs = [subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True,
                           timeout=30, env=_env()) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
    assert "at index 0 with 0 orders" in runs[0].stdout and "at index 2 with 1 orders" in runs[1].stdout
    assert "rejected by check(), nothing journaled: no work order 12345" in runs[0].stdout
    dump = prevalence_cli("journal", "dump", str(tmp_path))
    assert dump.returncode == 0 and dump.stdout.count("workorders.OpenOrder") == 2


# -- step 2: the rules --------------------------------------------------------------------------
def test_step2_check_rejects_before_journaling(tmp_path):
    with prevalence.open(str(tmp_path), Board) as db:
        order = db.execute(OpenOrder("paint the fence"))
        with pytest.raises(BoardError, match="was never assigned"):
            db.execute(Close(order))
        with pytest.raises(BoardError, match="needs a title"):
            db.execute(OpenOrder("  "))
        assert db.last_index == 1  # nothing journaled


def test_step2_execute_raising_keeps_what_it_changed(tmp_path):
    with prevalence.open(str(tmp_path), Board) as db:
        a = db.execute(OpenOrder("a"))
        b = db.execute(OpenOrder("b"))
        with pytest.raises(BoardError, match="no work order 999"):
            db.execute(CloseAllUnchecked((a, 999, b)))
        assert db.last_index == 3  # journaled
        assert [o["state"] for o in db.query(Orders())] == ["closed", "open"]
    with prevalence.open(str(tmp_path), Board) as db:  # replay raises at the same point, same result
        assert [o["state"] for o in db.query(Orders())] == ["closed", "open"]


def test_step2_transactions_are_frozen_dataclasses(tmp_path):
    @dataclasses.dataclass  # not frozen
    class Rename(prevalence.Transaction, name="tutorial.Rename"):
        order: int
        title: str

        def execute(self, root, ctx):
            root.orders[self.order].title = self.title

    with prevalence.open(str(tmp_path), Board) as db:
        with pytest.raises(prevalence.CodecError, match="must be frozen"):
            db.execute(Rename(1, "x"))
        assert db.last_index == 0


def test_step2_schema_version_upgrade(tmp_path):
    # what the codec does with an entry written by version 1 of OpenOrder
    assert CODEC.from_plain(["workorders.OpenOrder", 1, {"title": "old"}]) == OpenOrder("old", 2)
    assert CODEC.to_plain(OpenOrder("new", 3)) == ["workorders.OpenOrder", 2, {"title": "new", "priority": 3}]
    with pytest.raises(prevalence.CodecError, match="only knows versions up to 2"):
        CODEC.from_plain(["workorders.OpenOrder", 3, {"title": "future"}])
    # a journal written by version 1 is recovered through upgrade()
    with Journal(str(tmp_path / "journal")) as journal:
        journal.append(1, 0, int(EntryKind.COMMAND),
                       encode_command(1_700_000_000_000_000, ["workorders.OpenOrder", 1, {"title": "old"}]))
        journal.wait(1)
    with prevalence.open(str(tmp_path), Board) as db:
        [order] = db.query(Orders())
        assert (order["title"], order["priority"], order["opened"]) == ("old", 2, "2023-11-14T22:13:20+00:00")


# -- step 3: snapshots --------------------------------------------------------------------------
def test_step3_snapshots(tmp_path):
    data = str(tmp_path / "board")
    with prevalence.open(data, Board) as db:
        for k in range(5):
            db.execute(OpenOrder(f"order {k}"))
        meta = db.snapshot()
        assert meta.index == 5 and os.path.basename(meta.path) == "snapshot-00000000000000000005.snap"
        db.execute(Assign(1, "ada"))
    with prevalence.open(data, Board) as db:  # snapshot 5 + entry 6
        assert db.last_index == 6 and db.query(Orders("assigned"))[0]["id"] == 1
    with prevalence.open(data, Board, snapshot_every=3) as db:  # automatic, in the background
        for k in range(3):
            db.execute(OpenOrder(f"more {k}"))
    assert "snapshot-00000000000000000009.snap" in os.listdir(os.path.join(data, "snapshots"))
    out = prevalence_cli("state", data, "--root", "workorders:Board", "--at", "2", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["index"] == 2
    dump = prevalence_cli("journal", "dump", data, "--from", "6")
    assert dump.returncode == 0 and "workorders.Assign" in dump.stdout


# -- steps 4 and 5: a cluster of real node processes --------------------------------------------
def _wait(what, predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def _one_leader(directory):
    from rpc.cluster import cluster_status  # what `prevalence status` prints, without a process per poll

    nodes = cluster_status(directory, timeout=0.5)
    leaders = [n for n in nodes if n["role"] == "leader"]
    return leaders[0] if len(leaders) == 1 and all(n["reachable"] for n in nodes) else None


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL/SIGTERM")
def test_steps_4_and_5_cluster_client_and_leader_only_plugin(tmp_path, monkeypatch):
    import rpc
    from rpc.cluster import free_port_block, start_node, write_cluster

    data = str(tmp_path / "board-cluster")
    base = free_port_block(3)
    addresses = [f"127.0.0.1:{base + k}" for k in range(3)]
    secret_file = os.path.join(data, "client.secret")
    # step 4: `prevalence cluster up --nodes 3 --data DIR --port BASE --root workorders:Board`
    up = subprocess.Popen([sys.executable, "-m", "rpc.cli", "cluster", "up", "--nodes", "3", "--data", data,
                           "--port", str(base), "--root", "workorders:Board"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    nodes: dict = {}
    try:
        _wait("a leader", lambda: os.path.exists(os.path.join(data, "n3.toml")) and _one_leader(data))
        table = prevalence_cli("status", "--cluster", data).stdout
        assert "leader" in table and "follower" in table
        nodes_json = json.loads(prevalence_cli("status", "--cluster", data, "--json").stdout)["nodes"]
        assert sorted(n["address"] for n in nodes_json) == addresses

        events = []
        with rpc.connect(addresses, secret_file=secret_file) as c:
            sub = c.subscribe(events.append)
            order = c.execute(OpenOrder("fix the door", priority=1))
            c.execute(Assign(order, "ada"))
            assert [o["id"] for o in c.query(Orders("assigned"))] == [order]  # linearizable
            assert c.query(Orders(), consistency="leader")[0]["assignee"] == "ada"
            _wait("a follower caught up", lambda: len(c.query(Orders(), consistency="local")) == 1)
            with pytest.raises(BoardError, match="no work order 999") as refused:
                c.execute(Close(999))
            assert refused.value.rejected is True  # check() refused it: nothing applied
            with pytest.raises(BoardError) as failed:
                c.execute(CloseAllUnchecked((order, 999)))
            assert failed.value.rejected is False  # execute raised: the first close stays
            assert c.query(Orders("closed"))[0]["id"] == order

            # exactly once across a failover: SIGKILL the leader while a writer runs
            done, errors = [], []

            def writer():
                try:
                    for k in range(30):
                        done.append(c.execute(OpenOrder(f"during failover {k}")))
                except Exception as exc:  # noqa: BLE001 - reported by the assert below
                    errors.append(exc)

            t = threading.Thread(target=writer)
            t.start()
            _wait("some writes", lambda: len(done) >= 5)
            leader = _one_leader(data)
            os.kill(leader["pid"], signal.SIGKILL)
            t.join(30)
            assert not errors and len(done) == 30 and len(set(done)) == 30
            titles = [o["title"] for o in c.query(Orders())]
            assert sum(t.startswith("during failover") for t in titles) == 30  # none twice, none lost

            _wait("the subscription saw every applied command", lambda: len(events) >= 33)
            sub.close()
        # every applied command, in order; not the refused Close(999), which changed nothing
        types = [e.type for e in events[:3]]
        assert types == ["workorders.OpenOrder", "workorders.Assign", "workorders.CloseAllUnchecked"], types
        assert len(events) == 33 and [e.index for e in events] == sorted(e.index for e in events)
        assert events[0].fields == {"title": "fix the door", "priority": 1}
        assert all(isinstance(e, rpc.Event) for e in events)

        # "Many commands from one thread": execute_async
        with rpc.connect(addresses, secret_file=secret_file) as c:
            futures = [c.execute_async(OpenOrder(f"inspect floor {k}")) for k in range(100)]
            ids = [f.result(30) for f in futures]
            assert len(set(ids)) == 100 and ids == sorted(ids)  # each applied once, in the order sent
            refused = c.execute_async(Close(999))
            assert isinstance(refused.exception(30), BoardError) and refused.exception().rejected is True
            assert len(c.query_async(Orders()).result(30)) == 131

        up.send_signal(signal.SIGTERM)  # Ctrl-C in the tutorial
        out, _ = up.communicate(timeout=20)
        assert up.returncode == 0 and "; not restarted" in out and "stopping the cluster" in out

        # step 5: the same cluster, now hosting the dispatcher plugin
        paths = write_cluster(data, 3, base, "workorders:Board",
                              app={"plugin": "workorders:attach", "outbox": "outbox", "interval": 0.2})
        cfg_text = open(paths[0], encoding="utf-8").read()
        assert '[app]\nplugin = "workorders:attach"\noutbox = "outbox"\ninterval = 0.2' in cfg_text
        monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])  # start_node's processes inherit it
        nodes = {f"n{k + 1}": start_node(p, os.path.join(data, f"n{k + 1}.log")) for k, p in enumerate(paths)}
        outbox = os.path.join(data, "outbox")
        with rpc.connect(addresses, secret_file=secret_file) as c:
            total = len(c.query(Orders()))
            assert total == 131  # the state of step 4, recovered from each node's disk
            _wait("every order dispatched", lambda: not c.query(Undispatched()), 20)
            assert len(os.listdir(outbox)) == total
            leader = _one_leader(data)
            assert {o["dispatched_by"] for o in c.query(Orders())} == {leader["id"]}

            def dispatcher(address):
                return msgpack.unpackb(c.app_call(address, "workorders.dispatcher"))

            assert dispatcher(leader["address"]) == {"node": leader["id"], "leading": True, "sent": total}
            follower = next(a for a in addresses if a != leader["address"])
            assert dispatcher(follower)["leading"] is False

            os.kill(leader["pid"], signal.SIGKILL)  # the master's PC fails
            new = c.execute(OpenOrder("after the failover"))
            _wait("dispatched by the new leader",
                  lambda: next(o for o in c.query(Orders()) if o["id"] == new)["dispatched_by"], 20)
            by = next(o for o in c.query(Orders()) if o["id"] == new)["dispatched_by"]
            assert by != leader["id"]
            with open(os.path.join(outbox, f"order-{new}.json"), encoding="utf-8") as f:
                assert json.load(f)["title"] == "after the failover"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for p in nodes.values():
            if p.poll() is None:
                p.terminate()
        for p in nodes.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


# -- the whole tutorial, as written --------------------------------------------------------------
TUTORIAL = os.path.join(ROOT, "docs", "tutorial.md")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def tutorial_blocks() -> list[tuple[str, str]]:
    with open(TUTORIAL, encoding="utf-8") as f:
        return [(m.group(1), m.group(2)) for m in FENCE.finditer(f.read())]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="runs the tutorial's POSIX shell commands")
def test_the_tutorial_runs_as_written(tmp_path):
    """Every block, in order. The reader's /tmp is tmp_path, the ports 7300.. and 7310..
    free blocks; `prevalence` and `python3` are this checkout's and this interpreter's
    (the console script would run the installed copy). `pip install` is the one line not
    run: the test runs in the installed environment already."""
    from workorders import Dispatcher

    ports = {0: free_port_block(3), 1: free_port_block(3)}

    def here(text: str) -> str:
        text = text.replace("/tmp/", f"{tmp_path}/")
        return re.sub(r"\b73([01])(\d)\b", lambda m: str(ports[int(m.group(1))] + int(m.group(2))), text)

    with open(os.path.join(EXAMPLES, "workorders.py"), encoding="utf-8") as f:
        module = f.read()
    exports, excerpts, ran = [], [], []
    running: list[subprocess.Popen] = []

    def shell(command: str) -> subprocess.CompletedProcess:
        script = "\n".join([*exports, command])
        return subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)

    def stop(up: subprocess.Popen) -> None:
        up.send_signal(signal.SIGINT)  # Ctrl-C, as the tutorial says
        up.wait(20)

    try:
        for lang, body in tutorial_blocks():
            body = here(body)
            if lang == "sh":
                for line in body.splitlines():
                    command = line.split("  #")[0].strip()
                    if not command or command.startswith("python3 -m pip install"):
                        continue
                    command = re.sub(r"^prevalence ", f"{sys.executable} -m rpc.cli ", command)
                    command = re.sub(r"^python3 ", f"{sys.executable} ", command)
                    if command.startswith("export "):
                        exports.append(command)
                    elif " cluster up " in command:  # the foreground command: in the background here
                        for up in running:
                            stop(up)
                        data = re.search(r"--data (\S+)", command).group(1)
                        log = open(os.path.join(tmp_path, f"up-{len(running)}.log"), "w")
                        running.append(subprocess.Popen(["bash", "-c", "\n".join([*exports, "exec " + command])],
                                                        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
                        _wait(f"a leader of {data}", lambda: os.path.exists(os.path.join(data, "n3.toml"))
                              and _one_leader(data), 30)
                    else:
                        r = shell(command)
                        assert r.returncode == 0, f"{line}\n{r.stdout}{r.stderr}"
                    ran.append(line)
            elif lang == "toml":
                table = tomllib.loads(body)["app"]
                assert table["plugin"] == "workorders:attach" and set(table) - {"plugin"} <= Dispatcher.KNOWN
                ran.append(body)
            elif body.startswith(">>>"):
                path = os.path.join(tmp_path, "doctest.txt")
                with open(path, "w", encoding="utf-8") as f:
                    f.write(body)
                r = shell(f"{sys.executable} -m doctest {path}")
                assert r.returncode == 0, r.stdout + r.stderr
                ran.append(body)
            elif body.startswith(("import ", "from ")) and not body.startswith("from __future__"):
                path = os.path.join(tmp_path, f"script-{len(ran)}.py")
                with open(path, "w", encoding="utf-8") as f:
                    f.write(body)
                # this checkout's packages, not an installed copy's (the tutorial's PYTHONPATH has examples/ only)
                r = shell(f'PYTHONPATH="$PYTHONPATH:{ROOT}" {sys.executable} {path}')
                assert r.returncode == 0, f"{body}\n{r.stdout}{r.stderr}"
                ran.append(body)
            else:  # a part of the module, quoted whole
                for part in body.split("\n\n\n"):  # each top-level piece, as the module has it
                    assert part.strip("\n") in module, f"not the text of examples/workorders.py:\n{part}"
                excerpts.append(body)
        # the quoted parts, run together, define the whole domain without the module
        r = subprocess.run([sys.executable, "-c", "\n\n".join(excerpts) + "\nprint(sorted(Board().orders))"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=30, env=_env())
        assert r.returncode == 0 and r.stdout == "[]\n", r.stderr
        dispatch = os.path.join(tmp_path, "board-dispatch")
        assert '[app]\nplugin = "workorders:attach"' in open(os.path.join(dispatch, "n1.toml")).read()
        [sent] = os.listdir(os.path.join(dispatch, "outbox"))  # the one order of step 5, sent once
        assert re.fullmatch(r"order-\d+\.json", sent)
        assert len(excerpts) >= 4 and len(ran) >= 10
    finally:
        for up in running:
            if up.poll() is None:
                stop(up)
