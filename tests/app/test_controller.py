"""The controller's decisions, against real agents and a real engine, cycle by cycle."""
from __future__ import annotations

import time

import pytest

import prevalence
from app.agent import Agent, AgentError
from app.controller import Controller
from app.model import ApplyLayout, Grid, GridView, NodeSpec, SetSettings


class Link:
    """The wire to one in-process agent, which a test can cut or make refuse pushes."""

    def __init__(self, agent: Agent, address: str):
        self.agent, self.address = agent, address
        self.down = False
        self.gone = False  # a refused connection rather than silence
        self.refuse_pushes = 0
        self.pushes: list[float] = []

    def status(self) -> dict:
        if self.gone:
            raise AgentError(f"agent {self.agent.node_id} at {self.address}: cannot connect: Connection refused",
                             gone=True)
        if self.down:
            raise AgentError(f"agent {self.agent.node_id} at {self.address}: connect timed out after 0.5 s")
        return self.agent.status()

    def apply(self, settings: dict) -> dict:
        self.pushes.append(time.monotonic())
        if self.refuse_pushes:
            self.refuse_pushes -= 1
            raise AgentError("push refused")
        return self.agent.apply(settings)

    def close(self) -> None:
        pass


@pytest.fixture
def setup(tmp_path):
    db = prevalence.open(str(tmp_path), Grid)
    db.execute(ApplyLayout(1, 2, (NodeSpec("a", "h:1", 1, 1), NodeSpec("b", "h:2", 1, 2)), "x"))
    agents = {"a": Agent("a"), "b": Agent("b")}
    links: dict[str, Link] = {}
    recorded: list = []

    def record(tx):
        recorded.append(tx)
        return db.execute(tx)

    def link(node_id, address):
        links[node_id] = Link(agents[node_id], address)
        return links[node_id]

    c = Controller(lambda first: db.query(GridView()), record, link, down_after=0.3, max_backoff=0.4)
    yield db, c, agents, links, recorded
    db.close()


def nodes(db) -> dict:
    return {n["id"]: n for n in db.query(GridView())["nodes"]}


def test_pushes_desired_settings_and_records_only_changes(setup):
    db, c, agents, links, recorded = setup
    c.cycle()
    assert {n["health"] for n in nodes(db).values()} == {"up"} and len(recorded) == 2
    c.cycle()
    assert len(recorded) == 2  # nothing changed: nothing journaled
    db.execute(SetSettings(("a",), {"volume": "30"}))
    c.cycle()
    assert agents["a"].settings == {"volume": 30} and nodes(db)["a"]["in_sync"]
    assert nodes(db)["a"]["detail"] == "settings pushed" and len(links["a"].pushes) == 1
    c.cycle()
    assert len(links["a"].pushes) == 1 and len(recorded) == 3  # idempotent: no second push


def test_a_silent_node_is_marked_down_after_down_after_and_restored_when_back(setup):
    db, c, agents, links, recorded = setup
    db.execute(SetSettings(("b",), {"content": "x"}))
    c.cycle()
    links["b"].down = True
    c.cycle()
    assert nodes(db)["b"]["health"] == "up"  # one missed heartbeat is not down yet
    time.sleep(0.35)
    c.cycle()
    b = nodes(db)["b"]
    assert (b["health"], b["actual"]) == ("down", None) and "timed out" in b["detail"]
    agents["b"] = fresh = Agent("b")  # the PC rebooted: its agent is empty, with a new boot id
    links["b"].agent, links["b"].down = fresh, False
    c.cycle()
    b = nodes(db)["b"]
    assert fresh.settings == {"content": "x"}
    assert (b["health"], b["in_sync"], b["boot"], b["detail"]) == ("up", True, fresh.boot,
                                                                   "agent restarted: settings restored")


def set_with_refused_pushes(db, c, links, refused: int = 3) -> None:
    """Node a's agent refuses the next ``refused`` pushes of a new setting; cycle until in sync."""
    c.cycle()
    links["a"].refuse_pushes = refused
    db.execute(SetSettings(("a",), {"volume": "9"}))
    deadline = time.monotonic() + 5
    while not nodes(db)["a"]["in_sync"] and time.monotonic() < deadline:
        c.cycle()
        time.sleep(0.02)


def test_failed_pushes_back_off_and_are_retried(setup):
    db, c, agents, links, recorded = setup
    set_with_refused_pushes(db, c, links)
    pushes = links["a"].pushes
    assert nodes(db)["a"]["in_sync"] and len(pushes) == 4
    gaps = [b - a for a, b in zip(pushes, pushes[1:])]
    assert gaps[0] >= 0.25 * 0.8 and gaps[1] >= 0.4 * 0.8  # 0.25 s, then doubled up to the 0.4 s cap
    assert nodes(db)["b"]["in_sync"]  # one node's trouble does not hold up the others


def test_a_node_removed_from_the_layout_is_forgotten(setup):
    db, c, agents, links, recorded = setup
    c.cycle()
    db.execute(ApplyLayout(1, 2, (NodeSpec("a", "h:1", 1, 1),), "y"))
    c.cycle()
    assert set(nodes(db)) == {"a"} and not any(tx.id == "b" for tx in recorded[2:])


def test_an_address_answering_as_another_agent_is_never_pushed(setup):
    db, c, agents, links, recorded = setup
    db.execute(SetSettings(("a",), {"volume": "1"}))
    agents["a"] = Agent("b")  # the layout points a's address at b's PC
    c.cycle()
    a = nodes(db)["a"]
    assert (a["health"], a["detail"]) == ("down", "wrong agent: h:1 answers as 'b'")
    assert agents["a"].settings == {} and not links["a"].pushes
    count = len(recorded)
    c.cycle()
    assert len(recorded) == count  # said once


def test_a_refused_connection_is_down_at_once(setup):
    db, c, agents, links, recorded = setup
    c.cycle()
    links["a"].gone = True
    c.cycle()
    a = nodes(db)["a"]
    assert a["health"] == "down" and "Connection refused" in a["detail"]


def test_retries_of_a_failing_push_are_journaled_once(setup):
    db, c, agents, links, recorded = setup
    set_with_refused_pushes(db, c, links)
    details = [tx.detail for tx in recorded if tx.id == "a"]
    assert details[1:] == ["push failed, retrying: push refused", "settings pushed"]
