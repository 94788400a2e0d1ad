"""What comes back from an agent's port is hostile until checked: a reply of the wrong
shape is an AgentError naming the agent (the node is down, with the reason), never an
exception that ends the controller's cycle for every other node too."""
from __future__ import annotations

import time

import msgpack
import pytest

import prevalence
from app.agent import AgentError, AgentLink
from app.controller import Controller
from app.model import ApplyLayout, Grid, GridView, NodeSpec, SetSettings
from tests.app.test_controller import Link
from app.agent import Agent


class _Wire:
    def __init__(self, reply):
        self.reply = reply

    def call(self, *args):
        return self.reply

    def close(self):
        pass


def _link(reply) -> AgentLink:
    link = AgentLink("a", "127.0.0.1:1", b"k" * 32)
    link._link.close()
    link._link = _Wire(reply)
    return link


def _packed(value) -> tuple:
    return ("ok", msgpack.packb(value, use_bin_type=True))


GOOD = {"id": "a", "boot": "b1", "settings": {"volume": 3}, "pushes": 1}


@pytest.mark.parametrize("reply", [
    ("ok", b"\xc1"),  # not msgpack
    ("ok", b"\x92\x01"),  # truncated
    ("ok", "text"),  # not bytes
    ("ok",),  # too short
    "nonsense",
    None,
    _packed([1, 2]),
    _packed({"id": "a", "boot": "b1"}),  # no settings
    _packed({**GOOD, "settings": [1]}),
    _packed({**GOOD, "settings": {"volume": [1]}}),
    _packed({**GOOD, "settings": {str(i): i for i in range(1000)}}),
    _packed({**GOOD, "settings": {"content": "x" * 100_000}}),
    _packed({**GOOD, "boot": ["x"]}),
    _packed({**GOOD, "id": None}),
    _packed({**GOOD, "settings": {"content": "\x1b]0;owned\x07\x1b[2J"}}),  # would drive grid show's terminal
    _packed({**GOOD, "settings": {"\x1b[2J": 1}}),
    _packed({**GOOD, "boot": "\x1b[2J"}),
])
def test_a_malformed_status_reply_is_an_agent_error(reply):
    with pytest.raises(AgentError, match="agent a at 127.0.0.1:1"):
        _link(reply).status()


def test_a_well_formed_reply_passes():
    assert _link(_packed(GOOD)).status() == GOOD
    assert _link(list(_packed(GOOD))).status() == GOOD  # as the transport hands it over


def test_one_agent_with_garbage_replies_does_not_hold_up_the_others(tmp_path):
    db = prevalence.open(str(tmp_path), Grid)
    try:
        db.execute(ApplyLayout(1, 2, (NodeSpec("a", "h:1", 1, 1), NodeSpec("b", "h:2", 1, 2)), "x"))
        agents = {"a": Agent("a"), "b": Agent("b")}
        real = {"a": _link(_packed({"id": "a", "boot": "b1"}))}

        def link(node_id, address):
            return real.get(node_id) or Link(agents[node_id], address)

        c = Controller(lambda first: db.query(GridView()), db.execute, link, down_after=0.0)
        db.execute(SetSettings(("b",), {"volume": "7"}))
        c.cycle()
        nodes = {n["id"]: n for n in db.query(GridView())["nodes"]}
        assert agents["b"].settings == {"volume": 7} and nodes["b"]["in_sync"]
        assert nodes["a"]["health"] == "down" and "agent a" in nodes["a"]["detail"]
    finally:
        db.close()


class _HungLink(Link):
    """An agent whose PC hangs: every call waits its whole time-out, then fails."""

    def status(self):
        time.sleep(0.5)
        raise AgentError(f"agent {self.agent.node_id} at {self.address}: handshake not answered within 0.5 s")


def test_many_hung_agents_do_not_delay_a_push_to_an_agent_that_answers(tmp_path):
    db = prevalence.open(str(tmp_path), Grid)
    try:
        hung = [NodeSpec(f"h{i}", f"h:{i + 10}", 1, i + 1) for i in range(24)]
        db.execute(ApplyLayout(2, 32, (*hung, NodeSpec("a", "h:1", 2, 1)), "x"))
        agents = {n.id: Agent(n.id) for n in (*hung, NodeSpec("a", "h:1", 2, 1))}

        def link(node_id, address):
            return (Link if node_id == "a" else _HungLink)(agents[node_id], address)

        c = Controller(lambda first: db.query(GridView()), db.execute, link, down_after=0.0)
        try:
            deadline = time.monotonic() + 10
            while any(n["health"] != "down" for n in db.query(GridView())["nodes"] if n["id"] != "a"):
                assert time.monotonic() < deadline, "the hung agents were never recorded down"
                c.cycle()
            db.execute(SetSettings(("a",), {"volume": "5"}))
            began = time.monotonic()
            c.cycle()
            took = time.monotonic() - began
            assert agents["a"].settings == {"volume": 5}
            assert took < 0.4, f"a cycle waited {took:.1f} s for agents known to be down"
        finally:
            c.stop()
    finally:
        db.close()


def test_a_first_layout_that_failed_is_tried_again_next_cycle(tmp_path):
    """The new leader's first act (applying the layout file to a grid that has none) timed
    out on a busy cluster: it must be tried again, not dropped for the whole term."""
    db = prevalence.open(str(tmp_path), Grid)
    try:
        calls: list[int] = []

        def first(view):
            calls.append(1)
            if len(calls) == 1:
                raise prevalence.PrevalenceError("not committed within 5 s")

        c = Controller(lambda first: db.query(GridView()), db.execute, lambda *a: None, before_first=first)
        with pytest.raises(prevalence.PrevalenceError):
            c.cycle()
        c.cycle()
        assert len(calls) == 2
        c.cycle()
        assert len(calls) == 2  # once it succeeded, never again
    finally:
        db.close()


class _LostReplyLink(Link):
    """The push lands on the agent, but its answer is lost on the way back (a slow agent,
    the call's time-out)."""

    def apply(self, settings):
        self.agent.apply(settings)
        raise AgentError(f"agent {self.agent.node_id} at {self.address}: no answer within 1 s")


def test_a_push_whose_answer_was_lost_is_not_reported_as_failed_once_in_sync(tmp_path):
    db = prevalence.open(str(tmp_path), Grid)
    try:
        db.execute(ApplyLayout(1, 1, (NodeSpec("a", "h:1", 1, 1),), "x"))
        agent = Agent("a")
        c = Controller(lambda first: db.query(GridView()), db.execute, lambda i, a: _LostReplyLink(agent, a))
        c.cycle()
        db.execute(SetSettings(("a",), {"volume": "5"}))
        c.cycle()  # the push lands, its answer is lost
        c.cycle()  # the agent says it runs the desired settings
        a = db.query(GridView())["nodes"][0]
        assert a["in_sync"] and agent.settings == {"volume": 5}
        assert "failed" not in a["detail"], a["detail"]
    finally:
        db.close()


def test_an_agent_that_does_not_answer_in_time_is_named_so():
    """grid show said 'agent n1 at ...: result expired' (RPyC's words) for a hung PC."""
    from rpyc.core.async_ import AsyncResultTimeout

    link = _link(None)

    def hang(*args):
        raise AsyncResultTimeout("result expired")

    link._link.call = hang
    with pytest.raises(AgentError, match=r"agent a at 127\.0\.0\.1:1: no answer within 1 s") as err:
        link.status()
    assert "result expired" not in str(err.value)
