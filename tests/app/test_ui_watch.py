"""The window's watch of the master (app.ui.session.MasterWatch) against nodes whose
status replies are scripted: what it concludes when no node leads, and from replies that
are not a node's."""
from __future__ import annotations

import pytest

from app.ui.model import Board
from app.ui.session import MasterWatch

NINE = [f"n{k}" for k in range(1, 10)]



def status(nid: str, role: str = "pre_candidate", term: int = 3, voters=NINE) -> list:
    return ["ok", {"id": nid, "role": role, "term": term, "leader": None, "address": f"127.0.0.1:{7100 + int(nid[1:])}",
                   "voters": list(voters)}]


def header_after(watch: MasterWatch) -> str:
    b = Board()
    b.apply(("link", watch.check()))
    return b.screen().header.text


def test_a_window_given_some_addresses_counts_the_voters_the_nodes_name(replies):
    """Before, three addresses of a nine-voter grid, two answering, gave "an election is
    running · 2 of 3 nodes answer": a majority of the addresses, not of the voters."""
    replies.update({"127.0.0.1:7101": status("n1"), "127.0.0.1:7102": status("n2"),
                    "127.0.0.1:7103": TimeoutError("handshake not answered")})
    watch = MasterWatch(list(replies), b"k" * 32)
    try:
        assert header_after(watch) == "No master: only 2 of 9 voters answer, a master needs 5"
    finally:
        watch.close()


def test_learners_that_answer_are_not_counted_toward_a_majority(replies):
    replies.update({"127.0.0.1:7101": status("n1", voters=["n1", "n2", "n3"]),
                    "127.0.0.1:7104": status("n4", voters=["n1", "n2", "n3"]),
                    "127.0.0.1:7102": TimeoutError("no answer"), "127.0.0.1:7103": TimeoutError("no answer")})
    watch = MasterWatch(list(replies), b"k" * 32)
    try:
        assert header_after(watch) == "No master: only 1 of 3 voters answer, a master needs 2"
        replies["127.0.0.1:7102"] = status("n2", voters=["n1", "n2", "n3"])
        assert header_after(watch) == "No master: an election is running · 2 of 3 voters answer"
    finally:
        watch.close()


@pytest.mark.parametrize("bad", [
    ["ok"], "ok", None, ["ok", "not a dict"], ["ok", {"id": "n2", "role": "leader"}],
    ["ok", {"id": "n2", "role": "leader", "term": "9", "address": "127.0.0.1:7102"}],
    ["ok", {"id": 2, "role": "leader", "term": 9, "address": "127.0.0.1:7102"}],
    ["ok", {"id": "n2", "role": ["leader"], "term": 9, "address": "127.0.0.1:7102"}],
    ["ok", {"id": "n2", "role": "leader", "term": 9, "address": None}],
])
def test_a_reply_that_is_not_a_status_counts_as_no_answer_and_the_watch_goes_on(replies, bad):
    replies.update({"127.0.0.1:7101": status("n1", role="follower", voters=["n1", "n2", "n3"]),
                    "127.0.0.1:7102": bad, "127.0.0.1:7103": TimeoutError("no answer")})
    watch = MasterWatch(list(replies), b"k" * 32)
    try:
        for _ in range(2):
            assert header_after(watch) == "No master: only 1 of 3 voters answer, a master needs 2"
        replies["127.0.0.1:7102"] = status("n2", role="leader", term=4, voters=["n1", "n2", "n3"])
        link = watch.check()
        assert link.state == "connected" and link.master == "n2" and link.term == 4
    finally:
        watch.close()


def test_a_leaders_id_and_address_reach_the_header_as_one_bounded_line(replies):
    """The header showed a status's id and address as sent: any length, line breaks too."""
    st = status("n1", "leader")
    st[1].update(id="n1\n" + "x" * 100_000, address="127.0.0.1:7101\r\nforged")
    replies.update({"127.0.0.1:7101": st})
    watch = MasterWatch(list(replies), b"k" * 32)
    try:
        text = header_after(watch)
        assert text.startswith("Connected · master n1") and len(text) < 500 and text.isprintable(), text[:300]
    finally:
        watch.close()


def test_the_master_an_old_epoch_elected_is_never_the_windows(replies):
    """After grid recover, n2 and n3 came back with their old data and elected a master of
    their own, in a higher term than the recovered n1's: the window took n2 for the master
    (the highest term), and its grid for the grid."""
    def of_epoch(nid, role, term, epoch, **more):
        st = status(nid, role, term, voters=["n1"] if epoch else ["n1", "n2", "n3"])
        st[1].update(cluster="a1a1a1a1", epoch=epoch, **more)
        return st

    replies.update({"127.0.0.1:7101": of_epoch("n1", "leader", 3, 1),
                    "127.0.0.1:7102": of_epoch("n2", "leader", 9, 0),
                    "127.0.0.1:7103": of_epoch("n3", "follower", 9, 0)})
    watch = MasterWatch(list(replies), b"k" * 32)
    try:
        link = watch.check()
        assert link.state == "connected" and link.master == "n1"
    finally:
        watch.close()
    # n1 does not answer this window: n2 is still no master, and it says why
    replies.update({"127.0.0.1:7101": TimeoutError("no answer"),
                    "127.0.0.1:7102": of_epoch("n2", "leader", 9, 0, superseded_by=1)})
    watch = MasterWatch(list(replies), b"k" * 32)
    try:
        link = watch.check()
        assert link.state != "connected"
        assert any("belongs to epoch 0, the cluster was recovered into epoch 1" in why
                   for _, _, why in link.unanswered), link
    finally:
        watch.close()
