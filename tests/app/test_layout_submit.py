"""A node's watcher submitting a layout edit whose answer is lost (a failover at that
moment): the edit is sent again, and the grid never says a layout it applied was refused."""
from __future__ import annotations

from app.layout import parse_layout
from app.model import LayoutUnchanged, RefuseLayout
from app.node import GridApp
from rpc.subscription import CommandUnanswered
from tests.app.test_layout import GOOD


class _Cluster:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.sent: list = []

    def execute(self, tx, timeout=None):
        self.sent.append(tx)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _app(cluster) -> GridApp:
    app = GridApp.__new__(GridApp)
    app.layout_path = "layout.toml"
    app._cluster = lambda: cluster
    return app


def test_a_layout_whose_answer_was_lost_is_sent_again_and_not_refused():
    layout = parse_layout(GOOD, "layout.toml")
    lost = CommandUnanswered("no leader answered within 10 s; the command was sent and may have been applied",
                             sent=True)
    cluster = _Cluster(lost, LayoutUnchanged("layout x is already applied"))
    _app(cluster)._submit_layout(layout)  # no error: the watcher records no refusal
    assert cluster.sent == [layout, layout]
    assert not any(isinstance(tx, RefuseLayout) for tx in cluster.sent)


def test_a_layout_applied_on_the_second_try_is_applied():
    layout = parse_layout(GOOD, "layout.toml")
    lost = CommandUnanswered("the command was sent and may have been applied", sent=True)
    cluster = _Cluster(lost, {"added": ["a"], "removed": [], "changed": []})
    _app(cluster)._submit_layout(layout)
    assert cluster.sent == [layout, layout]


class _Process:
    class cfg:
        path = "/tmp/n1.toml"
        id = "n1"

    def __init__(self):
        self.handlers: dict = {}
        self.leader_hooks: list = []


import pytest  # noqa: E402

from rpc.config import ConfigError  # noqa: E402


@pytest.mark.parametrize("settings, message", [
    ({"interval": 1e-9}, "'interval' must be from 0.05 to 60 seconds, got 1e-09"),
    ({"interval": float("inf")}, "'interval' must be from 0.05 to 60 seconds, got inf"),
    ({"interval": float("nan")}, "'interval' must be from 0.05 to 60 seconds, got nan"),
    ({"down_after": float("inf")}, "'down_after' must be from 0.1 to 3600 seconds, got inf"),
    ({"down_after": 0.001}, "'down_after' must be from 0.1 to 3600 seconds, got 0.001"),
])
def test_app_timings_that_would_burn_the_cpu_or_never_act_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        GridApp(_Process(), settings)
