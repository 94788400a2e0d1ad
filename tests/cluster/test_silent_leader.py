"""A leader that goes silent (isolated, no connection reset) is left by a writing client
soon after the others have elected a new one, not only after its attempt timeout."""
from __future__ import annotations

import sys
import threading
import time

import pytest

import rpc
from rpc.config import format_address
from tests.cluster.proxy import LinkProxy
from tests.cluster.test_partition import ProxiedCluster
from tests.prevalence.domain import Snapshot, Stamp

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")]


def silence(c: ProxiedCluster, front: dict[str, LinkProxy], nid: str, how: str, on: bool = True) -> None:
    """``isolated``: nothing reaches ``nid`` or leaves it; ``one-way``: everything reaches
    it, nothing it sends arrives. Either way without a reset."""
    for (src, dst), proxy in c.proxies.items():
        if how == "isolated" and nid in (src, dst):
            proxy.cut = on
        elif src == nid:
            proxy.cut_to_target = on
        elif dst == nid:
            proxy.cut_from_target = on
    if how == "isolated":
        front[nid].cut = on
    else:
        front[nid].cut_from_target = on


@pytest.mark.parametrize("how", ["isolated", "one-way"])
def test_a_writer_leaves_a_silent_leader_soon_after_the_new_election(tmp_path, how):
    c = ProxiedCluster(tmp_path)
    # the client reaches each node through a proxy of its own, cut with the node
    front = {nid: LinkProxy(cfg.listen) for nid, cfg in c.configs.items()}
    stop = threading.Event()
    done: list[tuple[float, str]] = []
    errors: list[BaseException] = []
    try:
        c.leader()
        with rpc.connect([format_address(p.address) for p in front.values()], secret=c.secret,
                         timeout=15) as client:
            def writer() -> None:
                n = 0
                try:
                    while not stop.is_set():
                        tag = f"w{n}"
                        client.execute(Stamp(tag))
                        done.append((time.monotonic(), tag))
                        n += 1
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            t = threading.Thread(target=writer)
            t.start()
            gaps = []
            for _fault in range(2):
                time.sleep(0.8)
                old = c.leader()
                silence(c, front, old, how)  # bytes vanish, nothing is reset
                cut_at = time.monotonic()
                c.leader(exclude={old})
                time.sleep(2.0)
                around = [t0 for t0, _ in done if cut_at - 0.5 <= t0 <= cut_at + 2.0]
                assert around[0] < cut_at < around[-1], "the writer made no progress around the fault"
                gaps.append(max(b - a for a, b in zip(around, around[1:])))
                silence(c, front, old, how, on=False)
                c.wait_converged()
            stop.set()
            t.join(20)
            assert not errors
            tags = [item[0] for item in client.query(Snapshot())[1]]
        assert len(tags) == len(set(tags)) and set(tags) == {tag for _, tag in done}
        # before: 1.5 s (the attempt timeout) and more; the election takes 0.25-0.5 s
        assert max(gaps) < 1.2, gaps
    finally:
        stop.set()
        c.stop()
        for p in front.values():
            p.close()
