"""An operator's shift with faults: what the grid does with an operator's change made
while part of it is down, and whether it says truthfully what happened."""
from __future__ import annotations

import threading
import time

from app.layout import LayoutWatcher, parse_layout
from app.model import RefuseLayout
from app.node import GridApp
from rpc.subscription import ClusterUnavailable
from tests.app.test_layout import GOOD


class _NoMasterFor:
    """A cluster that has no master for its first ``n`` commands, then applies them."""

    def __init__(self, n: int):
        self.n, self.sent, self.applied = n, [], threading.Event()

    def execute(self, tx, timeout=None):
        self.sent.append(tx)
        if len(self.sent) <= self.n:
            raise ClusterUnavailable("register_session: no leader answered within the deadline")
        if isinstance(tx, RefuseLayout):
            return None
        self.applied.set()
        return {"added": [], "removed": [], "changed": ["n2"]}


def test_a_layout_edit_saved_while_no_master_answers_is_applied_once_one_does(tmp_path):
    path = tmp_path / "layout.toml"
    path.write_bytes(GOOD)
    cluster = _NoMasterFor(2)
    app = GridApp.__new__(GridApp)
    app.layout_path = str(path)
    app._cluster = lambda: cluster
    app.process = type("P", (), {"cfg": type("C", (), {"id": "n1"})})()
    watcher = LayoutWatcher(str(path), app._submit_layout, app._refuse_layout, debounce=0.05).start(
        parse_layout(GOOD).digest)
    try:
        edit = GOOD.replace(b"rows = 2", b"rows = 3")
        path.write_bytes(edit)
        assert cluster.applied.wait(12), f"the edit was never applied; sent: {cluster.sent}"
        time.sleep(0.3)
    finally:
        watcher.close()
    # no refusal recorded: the edit was valid, only undelivered for a while
    assert not [tx for tx in cluster.sent if isinstance(tx, RefuseLayout)], cluster.sent
    assert {tx.digest for tx in cluster.sent} == {parse_layout(edit).digest}
