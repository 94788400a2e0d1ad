"""What ``prevalence status`` and a grid command that got no answer say about the master
(rpc.status_report.describe_master), from the rows of the nodes' statuses."""
from __future__ import annotations

from rpc.status_report import describe_master, status_row

VOTERS = ["n1", "n2", "n3", "n4", "n5"]


def ok(nid: str, role: str = "follower", term: int = 4, leader: str | None = None, voters=VOTERS,
       commit: int = 9) -> dict:
    return status_row(nid, f"127.0.0.1:{7100 + int(nid[1:])}", None, ["ok", {
        "id": nid, "role": role, "term": term, "leader": leader, "commit_index": commit, "applied_index": commit,
        "voters": list(voters)}])


def silent(nid: str) -> dict:
    return status_row(nid, f"127.0.0.1:{7100 + int(nid[1:])}", None, TimeoutError("handshake not answered"))


def test_the_leader_of_the_newest_term_is_named():
    rows = [ok("n1", "leader", term=3), ok("n2", "leader", term=4), ok("n3", leader="n2"), silent("n4")]
    assert describe_master(rows) == "n2 leads (term 4)"


def test_followers_of_a_leader_that_does_not_answer_say_so():
    rows = [ok("n1", leader="n5"), ok("n2", leader="n5"), ok("n3", term=3, leader="n4"), silent("n4"), silent("n5")]
    assert describe_master(rows) == "n1, n2 follow n5 (term 4), which does not answer"


def test_too_few_voters_to_elect_anyone_says_how_many_are_needed():
    rows = [ok("n1", "pre_candidate"), ok("n2", "pre_candidate"), silent("n3"), silent("n4"), silent("n5")]
    assert describe_master(rows) == "no master: 2 of the 5 voters answer (n1, n2); electing one needs 3"


def test_a_majority_without_a_leader_is_an_election_under_way():
    rows = [ok("n1", "candidate", term=5), ok("n2", term=5), ok("n3", term=5), silent("n4"), silent("n5")]
    assert describe_master(rows) == ("no master yet: 3 of the 5 voters answer, enough to elect one; "
                                     "an election is under way (term 5)")


def test_learners_that_answer_do_not_count_as_voters():
    rows = [ok("n1", "pre_candidate", voters=["n1", "n2", "n3"]), ok("n4", voters=["n1", "n2", "n3"]),
            silent("n2"), silent("n3")]
    assert describe_master(rows) == "no master: 1 of the 3 voters answer (n1); electing one needs 2"


def test_the_configuration_of_the_longest_log_counts_not_a_removed_nodes():
    """n3 was removed, still runs, and names the old voters; n1 and n2 hold the removal
    of n2 and n3 (seen on a cluster whose removal of a live voter lost it its quorum)."""
    rows = [ok("n1", "pre_candidate", term=1, voters=["n1", "n4"], commit=5),
            ok("n2", "pre_candidate", term=1, voters=["n1", "n4"], commit=5),
            ok("n3", "pre_candidate", term=1, voters=["n1", "n2", "n3", "n4"], commit=4), silent("n4")]
    assert describe_master(rows) == "no master: 1 of the 2 voters answer (n1); electing one needs 2"


def test_no_answer_at_all_and_nodes_that_answered_without_a_status():
    assert describe_master([silent("n1"), silent("n2")]) == "none of the 2 nodes answers"
    hung = status_row("n1", "127.0.0.1:7101", None, ["error", "node status unavailable: its raft loop hangs"])
    assert not hung["reachable"] and describe_master([hung, silent("n2")]) == "none of the 2 nodes answers"


def test_hostile_status_fields_are_bounded_and_ignored_when_malformed():
    row = status_row("n1", "127.0.0.1:7101", None, ["ok", {"role": "follower", "term": 2, "leader": "x\n" * 500,
                                                           "voters": [1, 2]}])
    assert "\n" not in row["leader"] and len(row["leader"]) <= 100 and row["voters"] == []


def test_replies_of_the_wrong_shape_or_types_never_crash_the_line():
    """A hostile or broken node's status: an "ok" without a dict, an id that is no
    text, a term that is no integer (each once raised AttributeError, TypeError or
    ValueError out of the grid command)."""
    from rpc.status_report import ask_status  # noqa: F401 - the shape check is ask_status's
    odd = [["ok", {"id": 7, "role": "leader", "term": 4}], ["ok", {"id": None, "role": "leader", "term": 4}],
           ["ok", {"role": "follower"}], ["ok", {"term": 2.5, "role": "candidate"}],
           ["ok", {"id": ["n1"], "role": "leader", "term": 9}]]
    for reply in odd:
        rows = [status_row("n1", "127.0.0.1:7101", None, reply), ok("n2", leader="n9")]
        line = describe_master(rows)
        assert type(line) is str and "\n" not in line
        line = describe_master([status_row("n1", "127.0.0.1:7101", None, reply)])
        assert type(line) is str


def test_an_ok_that_carries_text_is_malformed_not_a_refusal(monkeypatch):
    import rpc.status_report as sr

    class Link:
        def __init__(self, *a, **k): ...
        def __enter__(self): return self
        def __exit__(self, *exc): ...
        def call(self, method): return ["ok", "status"]

    monkeypatch.setattr(sr, "NodeLink", Link)
    [reply] = sr.ask_status([(("127.0.0.1", 1), None)], b"k", 1.0)
    row = status_row("n1", "127.0.0.1:1", None, reply)
    assert not row["reachable"] and describe_master([row]) == "none of the 1 nodes answers"
