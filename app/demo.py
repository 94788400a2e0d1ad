"""``grid demo``: a 3x3 grid on this machine, its master killed, the grid carrying on.

Each step prints what it does and what it measured; a failed step ends the demo with
exit code 1 and names the step. The times reported are measured, not assumed:
election (kill to a node reporting itself leader), client reconnect (kill to the next
acknowledged command of an operator client connected before the kill), dead node
noticed (kill to the controller recording it down) and node restore (restart to its
agent running its desired settings, asked of the agent itself).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time

from app.agent import AgentLink
from app.local import LocalGrid, grid_view, in_sync, write_grid
from rpc.localcluster import ClusterTimeout, NodeExited
from app.model import ApplyPreset, DefinePreset, GridError, SetSettings, check_size
from app.view import render, with_cluster


class StepFailed(Exception):
    pass


class PortTaken(StepFailed):
    pass


class Demo:
    def __init__(self, data: str, rows: int, columns: int):
        self.data, self.rows, self.columns = data, rows, columns
        self.grid: LocalGrid | None = None
        self.client = None
        self.times: dict[str, float] = {}
        self.step_no = 0
        self.steps = 6

    def say(self, text: str) -> None:
        print(f"       {text}", flush=True)

    def step(self, title: str) -> None:
        self.step_no += 1
        print(f"[{self.step_no}/{self.steps}] {title}", flush=True)

    def wait(self, what: str, predicate, timeout: float):
        try:
            return self.grid.wait_for(what, predicate, timeout, fatal=(StepFailed,))
        except ClusterTimeout as exc:
            raise StepFailed(str(exc)) from None

    def view(self) -> dict:
        return with_cluster(grid_view(self.client), self.client.status())

    # -- the steps ------------------------------------------------------------------------
    def start(self) -> None:
        n = self.rows * self.columns
        self.step(f"starting a {self.rows}x{self.columns} grid: {n} node processes on 127.0.0.1 in {self.data}")
        if os.path.isdir(self.data) and os.listdir(self.data):
            raise StepFailed(f"{self.data} is not empty: the demo makes a new grid in an empty directory")
        began = time.monotonic()
        for attempt in range(3):
            write_grid(self.data, self.rows, self.columns)  # a new block of free ports each time
            self.grid = LocalGrid.open(self.data)
            self.grid.start()
            self.client = self.grid.client(timeout=15.0)
            try:
                leader = self.wait("a master elected", lambda: self.alive() and self.grid.leader(timeout=60), 60)
                self.wait("the layout applied and every agent heard from",
                          lambda: self.alive() and (v := grid_view(self.client)) and v["layout_digest"]
                          and in_sync(v), 60)
                break
            except PortTaken as exc:  # another program took a port between choosing and binding it
                self.say(f"{exc}; trying other ports")
                self.close()
                for name in os.listdir(self.data):
                    path = os.path.join(self.data, name)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        else:
            raise StepFailed("no free block of ports after 3 tries")
        self.say(f"{n} nodes up in {time.monotonic() - began:.1f} s; master is {leader}")

    def alive(self) -> bool:
        """True, or the reason a node process ended (with the end of its log)."""
        try:
            self.grid.check_alive()
        except NodeExited as exc:
            if "Address already in use" in exc.tail:
                raise PortTaken(f"node {exc.node}'s port was taken by another program") from None
            raise StepFailed(str(exc)) from None
        return True

    def command(self) -> None:
        row, column = min(2, self.rows), self.columns  # row 2 and column 3 of the 3x3 grid
        self.step(f"operator commands: settings on nodes, a preset for row {row}, volume for column {column}")
        c = self.client
        c.execute(SetSettings(("all",), {"power": "on", "content": "welcome", "volume": "20"}))
        c.execute(SetSettings(("n1",), {"content": "lobby map"}))
        c.execute(DefinePreset("evening", {"content": "evening news", "brightness": "40"}))
        c.execute(ApplyPreset("evening", (f"row:{row}",)))
        c.execute(SetSettings((f"column:{column}",), {"volume": "55"}))
        began = time.monotonic()
        view = self.wait("every agent running its desired settings", lambda: (v := self.view()) and in_sync(v) and v, 30)
        self.say(f"all agents in sync {1000 * (time.monotonic() - began):.0f} ms after the last command")
        print(render(view), flush=True)
        self.before = {n["id"]: n["desired"] for n in view["nodes"]}

    def kill_master(self) -> None:
        g = self.grid
        victim = g.leader()
        self.victim = victim
        self.step(f"SIGKILL the master {victim} (pid {g.procs[victim].pid}) while an operator command is sent")
        elected: dict[str, object] = {}

        def watch_election() -> None:
            try:
                new = g.leader(timeout=15.0, exclude={victim})
                elected.update(t=time.monotonic(), id=new)
            except ClusterTimeout:
                pass

        survivor = next(n for n in sorted(self.before) if n != victim)
        killed = time.monotonic()
        g.kill(victim)
        watcher = threading.Thread(target=watch_election, daemon=True)
        watcher.start()
        self.client.execute(SetSettings((survivor,), {"content": "sent during failover"}))
        reconnected = time.monotonic()
        watcher.join(15)
        if "t" not in elected:
            raise StepFailed("no new master reported within 15 s")
        self.times["election"] = elected["t"] - killed
        self.times["client reconnect"] = reconnected - killed
        self.before[survivor] = {**self.before[survivor], "content": "sent during failover"}
        self.say(f"new master {elected['id']} elected {1000 * self.times['election']:.0f} ms after the kill")
        self.say(f"the operator's command succeeded {1000 * self.times['client reconnect']:.0f} ms after the kill, "
                 f"through the client's own reconnect to {self.client.leader}")
        self.wait(f"{victim} recorded down by the new master",
                  lambda: next(n for n in grid_view(self.client)["nodes"] if n["id"] == victim)["health"] == "down", 15)
        self.times["dead node noticed"] = time.monotonic() - killed
        self.say(f"the new master's controller recorded {victim} down "
                 f"{1000 * self.times['dead node noticed']:.0f} ms after the kill")

    def check_state(self) -> None:
        self.step("the state is intact on the new master")
        view = self.view()
        after = {n["id"]: n["desired"] for n in view["nodes"]}
        if after != self.before:
            diff = [k for k in self.before if self.before[k] != after.get(k)]
            raise StepFailed(f"desired settings differ after the failover on {', '.join(diff)}")
        live = [n for n in view["nodes"] if n["id"] != self.victim]
        if not in_sync({"nodes": live}):
            self.wait("the surviving agents in sync", lambda: in_sync(grid_view(self.client), [n["id"] for n in live]), 10)
        self.say(f"all {len(after)} nodes' desired settings are as before the kill, plus the command sent "
                 f"during it, applied once; the {len(live)} live agents are in sync")

    def restore(self) -> None:
        victim = self.victim
        self.step(f"restart {victim}: its agent comes back empty and the master restores it")
        g = self.grid
        began = time.monotonic()
        g.start(victim)
        link = AgentLink(victim, g.addresses[victim], g.secret)
        desired = self.before[victim]

        def restored() -> bool:
            return link.status()["settings"] == desired

        try:
            self.wait(f"{victim}'s agent running its desired settings", restored, 30)
        finally:
            link.close()
        self.times["node restore"] = time.monotonic() - began
        self.wait(f"{victim} recorded up and in sync",
                  lambda: in_sync(grid_view(self.client), [victim]), 10)
        self.say(f"{victim}'s agent runs {desired} again, {1000 * self.times['node restore']:.0f} ms after its "
                 f"restart (process start included)")

    def report(self) -> None:
        self.step("report")
        for name, value in self.times.items():
            self.say(f"{name:<18} {1000 * value:7.0f} ms")
        print(render(self.view()), flush=True)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.grid is not None:
            self.grid.stop()


def run_demo(rows: int = 3, columns: int = 3, keep_running: bool = False, data: str | None = None) -> int:
    check_size(rows, columns)  # refused before anything starts: GridError, one line from the CLI
    if rows * columns < 3:
        raise GridError(f"grid demo kills the master and shows the others elect a new one: a failover needs at "
                        f"least 3 nodes, the grid has {rows * columns}")
    directory = data or tempfile.mkdtemp(prefix="grid-demo-")
    demo = Demo(directory, rows, columns)
    failed = None
    try:
        for action in (demo.start, demo.command, demo.kill_master, demo.check_state, demo.restore, demo.report):
            action()
    except KeyboardInterrupt:
        failed = "interrupted"
    except Exception as exc:  # noqa: BLE001 - every failure is reported with its step
        failed = f"step {demo.step_no} failed: {type(exc).__name__}: {exc}"
    if failed:
        print("demo interrupted" if failed == "interrupted" else f"demo FAILED, {failed}", flush=True)
        if demo.grid is not None:
            print(f"       node logs are {directory}/n*.log", flush=True)
    if keep_running and not failed:
        print(f"the grid keeps running in {directory}: try `grid show --cluster {directory}`, "
              "`grid kill-master --cluster ...`; Ctrl-C stops it", flush=True)
        demo.client.close()
        return demo.grid.supervise(3.0, name="grid")
    demo.close()
    if failed:
        return 130 if failed == "interrupted" else 1  # 130: the shell's code for Ctrl-C
    if data is None:
        shutil.rmtree(directory, ignore_errors=True)
    print("demo passed: the grid survived the loss of its master", flush=True)
    return 0
