"""The cluster under real network faults: nodes in network namespaces of their own, real
kernel TCP between them, the faults applied by tests.cluster.netlab's wire (delay,
loss, corruption, cuts without a reset). Each test writes numbered commands all along,
then heals and checks that every acknowledged one is applied exactly once everywhere."""
from __future__ import annotations

import time

import pytest

from tests.cluster.netlab import NetLab, Writer, check_exactly_once, unavailable

pytestmark = [pytest.mark.slow]
WHY = unavailable()
needs_netns = pytest.mark.skipif(WHY is not None, reason=f"needs network namespaces: {WHY}")


@pytest.fixture
def lab(tmp_path):
    with NetLab(tmp_path, 3, seed=7) as lab:
        lab.leader(timeout=20)
        yield lab


@needs_netns
def test_bytes_damaged_past_the_tcp_checksum_never_reach_a_node_s_state(lab):
    """A broken NIC or middlebox can flip a bit and fix the TCP checksum: the damaged frame
    is refused by the node (the connection drops and the data is sent again), never
    journaled, applied or relayed: no node dies, the nodes agree, nothing acknowledged is lost."""
    with lab.client(timeout=15) as client, Writer(client) as w:
        time.sleep(0.5)
        lab.set("*", "*", corrupt=0.02, fix_checksum=True)
        time.sleep(6)
        lab.heal()
        time.sleep(1)
    assert lab.wire.counts["corrupted"] > 20
    assert len(w.acked) > 50
    check_exactly_once(lab, w)


@needs_netns
def test_a_slow_link_is_not_reported_as_a_wrong_clock(lab):
    """Answers from a follower held up 0.8 s on the way carry wall clock readings 0.8 s old:
    the clock is right (every node here runs on the same machine). The leader must not log
    that the follower's clock is off and to fix NTP."""
    leader = lab.leader()
    follower = next(n for n in lab.configs if n != leader)
    with lab.client(timeout=15) as client, Writer(client) as w:
        time.sleep(1.5)
        lab.set(follower, leader, delay=0.8)
        time.sleep(4)
        lab.heal()
        time.sleep(0.5)
    check_exactly_once(lab, w)
    assert "wall clock is" not in lab.log(leader), lab.tail(leader, 10)


@needs_netns
def test_a_round_trip_longer_than_the_election_timeout_is_named_with_the_setting_to_change(lab):
    """0.3 s each way between the nodes (a round trip of 0.6 s) outlasts the default
    election timeout (0.25..0.5 s): once the leader is gone, every candidate's votes come
    back after it had started over, and the terms climb without a leader for as long as
    the link stays so slow. That is the configuration's limit, not a bug of the link; the
    nodes must say so, with the numbers and the setting to change, not only log one
    'candidate in term N' line after another."""
    leader = lab.leader()
    lab.set("*", "*", delay=0.3)
    time.sleep(3)
    lab.isolate(leader)
    time.sleep(4)
    lab.heal()
    said = [line for n in lab.configs for line in lab.log(n).splitlines() if "election timeout" in line]
    assert said, lab.tail(leader, 20)
    assert all("[timeouts]" in line and "(0.25 s)" in line for line in said), said


@needs_netns
def test_a_client_whose_first_node_knows_no_leader_finds_the_one_that_leads(lab):
    """A follower cut off from the other nodes (not from the clients) knows no leader and
    answers 'not the leader' without a hint; the leader and the third node run on. A
    client given that follower's address first asked it again and again until its
    deadline (12 s: ClusterUnavailable, 'tried n1, n1, n1 ...') and never tried the
    others, while a healthy leader was one connection away."""
    import rpc
    from rpc.config import format_address
    from tests.prevalence.domain import Stamp

    leader = lab.leader()
    cut = next(n for n in lab.configs if n != leader)
    lab.isolate(cut, clients_too=False)
    time.sleep(2)  # it has given up its leader: a pre-candidate, no hint to give
    first = [format_address(lab.configs[cut].listen)] + [format_address(c.listen) for n, c in lab.configs.items()
                                                            if n != cut]
    with rpc.connect(first, secret=lab.secret, timeout=8) as client:
        t0 = time.monotonic()
        client.execute(Stamp("found"))
        took = time.monotonic() - t0
        assert client.leader == format_address(lab.configs[leader].listen)
    assert took < 2.0, took


def _threads(lab: NetLab, nid: str) -> int:
    with open(f"/proc/{lab.procs[nid].pid}/status", encoding="ascii") as f:
        return int(next(line for line in f if line.startswith("Threads:")).split()[1])


@needs_netns
def test_a_leader_cut_off_from_its_peers_steps_down_and_the_status_says_who_leads(lab):
    """The leader loses its peers silently (no reset), the clients still reach it: within
    an election timeout or so it stops leading, the others elect one of them, the writer
    moves on by itself, and `status` (asked meanwhile, in bounded time) names the new
    leader; after the heal the old leader follows and nothing acknowledged is lost."""
    from rpc.cluster import cluster_status
    from rpc.status_report import describe_master

    old = lab.leader()
    with lab.client(timeout=15) as client, Writer(client) as w:
        time.sleep(1)
        t0 = time.monotonic()
        lab.isolate(old, clients_too=False)
        time.sleep(2)
        t = time.monotonic()
        rows = cluster_status(lab.dir)
        asked = time.monotonic() - t
        lab.heal()
        t1 = time.monotonic()
        time.sleep(1.5)
    by_id = {r["id"]: r for r in rows}
    assert by_id[old]["role"] != "leader", rows
    new = [r["id"] for r in rows if r["role"] == "leader"]
    assert len(new) == 1 and new[0] != old, rows
    assert describe_master(rows).startswith(f"{new[0]} leads"), describe_master(rows)
    assert asked < 3.0
    assert w.longest_stall(t0, t1) < 2.0
    check_exactly_once(lab, w)
    st = lab.status()
    assert st[old]["role"] == "follower" and max(r["term"] for r in st.values()) <= 3, st


@needs_netns
def test_a_lossy_jittery_link_that_reorders_and_duplicates_changes_no_leader(tmp_path):
    """5 % loss, 50 +- 20 ms each way, 10 % of packets held back, 5 % doubled, on every
    link, with tick = 0.05 (election timeout 0.5..1 s, what docs/operations.md advises
    for a lossy link): TCP rides it; no election, every command once. (With the default
    0.25 s, TCP's 0.2 s minimum retransmission timeout plus the round trip outlasts the
    election timeout: measured, a leader change every few seconds.)"""
    with NetLab(tmp_path, 3, seed=7, tick=0.05) as lab:
        _, st0 = lab.stable_leader()
        with lab.client(timeout=15) as client, Writer(client) as w:
            time.sleep(0.5)
            lab.set("*", "*", loss=0.05, delay=0.05, jitter=0.02, reorder=0.10, duplicate=0.05)
            time.sleep(6)
            lab.heal()
            time.sleep(1)
        assert lab.wire.counts["dropped"] > 30 and lab.wire.counts["duplicated"] > 10
        check_exactly_once(lab, w)
        _, st = lab.stable_leader()
        assert {r["term"] for r in st.values()} == {r["term"] for r in st0.values()}, (st0, st)


@needs_netns
def test_a_flapping_link_leaves_no_thread_or_connection_behind(lab):
    """The leader's links to its peers cut and healed every 100-300 ms for 6 s: the
    cluster ends with one leader, every command applied once, and no node holds more
    threads than before (a connection attempt per flap must not leave one behind)."""
    import random

    rng = random.Random(3)
    before = {n: _threads(lab, n) for n in lab.configs}
    leader = lab.leader()
    with lab.client(timeout=15) as client, Writer(client) as w:
        end = time.monotonic() + 6
        cut = False
        while time.monotonic() < end:
            cut = not cut
            lab.isolate(leader, cut, clients_too=False)
            time.sleep(rng.uniform(0.1, 0.3))
        lab.heal()
        time.sleep(2)
    check_exactly_once(lab, w)
    # a connection cut mid-handshake ends at its timeouts: counted once they have passed
    # (CI once saw 3 more threads 2 s after the heal); a leak stays
    deadline = time.monotonic() + 10
    while True:
        after = {n: _threads(lab, n) for n in lab.configs}
        if all(after[n] <= before[n] + 2 for n in lab.configs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(after[n] <= before[n] + 2 for n in lab.configs), (before, after)


@needs_netns
def test_the_status_of_a_node_behind_a_slow_link_says_the_link_is_slow(lab):
    """0.3 s each way between the operator and one node: `status` cannot get that node's
    answer within its budget (connect, a two-round handshake, the call: some 6 round
    trips). It said 'no answer after the handshake within 0.694914 s', as if the node had
    had 0.7 s and failed to answer; it now says how the time went."""
    from rpc.cluster import cluster_status

    slow = next(n for n in lab.configs if n != lab.leader())
    lab.both(slow, "c", delay=0.3)
    t0 = time.monotonic()
    rows = {r["id"]: r for r in cluster_status(lab.dir)}
    assert time.monotonic() - t0 < 3.5
    error = rows[slow]["error"]
    assert not rows[slow]["reachable"] and "handshake took 1." in error and "slow link" in error, error


@needs_netns
def test_clients_that_vanish_behind_a_cut_leave_no_connection_on_the_leader(lab):
    """Eight clients connect to the leader, their link is cut silently, they go away. A
    connection with a reply still unacknowledged is not probed by TCP keepalive: it
    stayed on the node, thread and all, for TCP's ~15 minutes of retransmissions, and a
    fleet of operator PCs on a flapping link could fill the node's 128 connections.
    They must be gone within half a minute, as the idle ones are (keepalive)."""
    from tests.prevalence.domain import Put

    leader = lab.leader()
    time.sleep(1)
    base = _threads(lab, leader)
    clients = [lab.client(timeout=5) for _ in range(8)]
    for c in clients:
        c.execute(Put("x", 1))
    assert _threads(lab, leader) >= base + 8
    for n in lab.configs:
        lab.both("c", n, cut=True)
    for c in clients:
        c.close()
    deadline = time.monotonic() + 27  # keepalive: 10 s idle + 3 probes 3 s apart; unacknowledged: 20 s
    while time.monotonic() < deadline and _threads(lab, leader) > base + 1:
        time.sleep(1)
    assert _threads(lab, leader) <= base + 1, (base, _threads(lab, leader))
