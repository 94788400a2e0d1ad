"""Links cut by a fault-injecting proxy: a leader cut off from the majority stops
acknowledging writes within an election timeout, and no write it acknowledged is lost."""
from __future__ import annotations

import os
import sys
import time

import pytest

from rpc.config import load_config, render_config
from tests.cluster.harness import LocalCluster
from tests.cluster.proxy import LinkProxy
from tests.prevalence.domain import Snapshot, Stamp

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")]


class ProxiedCluster(LocalCluster):
    """Every node reaches every other node through its own LinkProxy."""

    def __init__(self, directory, nodes=3):
        super().__init__(directory, nodes)  # writes configs and starts the nodes...
        for p in self.procs.values():  # ...which we restart behind proxies
            p.kill()
            p.wait()
        self.proxies: dict[tuple[str, str], LinkProxy] = {}
        for src, cfg in self.configs.items():
            for dst, other in self.configs.items():
                if src != dst:
                    proxy = self.proxies[(src, dst)] = LinkProxy(other.listen)
                    cfg.peers[dst] = proxy.address
            with open(cfg.path, "w", encoding="utf-8") as f:
                f.write(render_config(cfg).replace(f'data = "{cfg.data}"', f'data = "{os.path.basename(cfg.data)}"'))
            self.configs[src] = load_config(cfg.path)
        for nid in self.configs:
            self.start(nid)

    def isolate(self, nid: str, cut: bool = True) -> None:
        for (a, b), proxy in self.proxies.items():
            if nid in (a, b):
                proxy.cut = cut

    def stop(self) -> None:
        super().stop()
        for p in self.proxies.values():
            p.close()


def test_isolated_leader_stops_acknowledging_and_loses_nothing(tmp_path):
    c = ProxiedCluster(tmp_path)
    try:
        old = c.leader()
        acked = []
        for k in range(10):
            assert c.call(old, "execute", Stamp(f"pre-{k}"))[0] == "ok"
            acked.append(f"pre-{k}")
        c.isolate(old)
        cut_at = time.monotonic()
        late_acks = []
        k = 0
        while time.monotonic() - cut_at < 1.5:  # keep writing to the isolated leader
            tag = f"iso-{k}"
            k += 1
            try:
                reply = c.call(old, "execute", Stamp(tag), timeout=0.5)
            except Exception:
                continue
            if reply[0] == "ok":
                late_acks.append((tag, time.monotonic() - cut_at))
        # cut off, it can commit nothing new: only writes already on a majority were acknowledged
        assert all(t < 0.4 for _tag, t in late_acks), late_acks
        assert c.status()[old]["role"] != "leader"  # CheckQuorum made it step down
        new = c.leader(exclude={old})
        assert c.call(new, "execute", Stamp("majority"))[0] == "ok"
        acked += [tag for tag, _t in late_acks] + ["majority"]
        c.isolate(old, cut=False)
        c.wait_converged()  # the healed node too
        tags = {item[0] for item in c.call(c.leader(), "query", Snapshot())[1][1]}
        missing = [t for t in acked if t not in tags]
        assert not missing, missing
    finally:
        c.stop()
