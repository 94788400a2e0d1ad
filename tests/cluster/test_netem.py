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
