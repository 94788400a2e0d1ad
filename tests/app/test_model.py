"""The grid's transactions on the embedded engine: rules, clear refusals, identical replay."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import prevalence
from app.layout import parse_layout
from app.model import (
    AddNode, ApplyLayout, ApplyPreset, DefinePreset, DeletePreset, Grid, GridError, GridView, LayoutUnchanged,
    MarkNode, MoveNode, NodeDetail, NodeSpec, RefuseLayout, RemoveNode, SetSettings,
)

LAYOUT = ApplyLayout(3, 3, tuple(NodeSpec(f"n{k + 1}", f"127.0.0.1:{7101 + k}", k // 3 + 1, k % 3 + 1)
                                 for k in range(9)), "d1")


@pytest.fixture
def db(tmp_path):
    with prevalence.open(str(tmp_path), Grid) as engine:
        engine.execute(LAYOUT)
        yield engine


def desired(db, node_id):
    return db.query(NodeDetail(node_id))["desired"]


def test_settings_merge_on_ids_rows_and_columns(db):
    assert db.execute(SetSettings(("all",), {"power": "on", "volume": "10"})) == [f"n{k}" for k in range(1, 10)]
    assert db.execute(SetSettings(("row:2", "n1"), {"volume": "40"})) == ["n1", "n4", "n5", "n6"]
    assert db.execute(SetSettings(("column:3",), {"content": "news"})) == ["n3", "n6", "n9"]
    assert desired(db, "n6") == {"power": "on", "volume": 40, "content": "news"}
    assert desired(db, "n2") == {"power": "on", "volume": 10}


@pytest.mark.parametrize("targets, settings, message", [
    (("n42",), {"volume": "1"}, "no node 'n42'"),
    (("row:7",), {"volume": "1"}, "row:7: no node there"),
    (("n1",), {"volume": "101"}, "volume='101': must be from 0 to 100"),
    (("n1",), {"colour": "red"}, "unknown setting 'colour'"),
    (("n1",), {"power": "maybe"}, "must be one of on, off"),
    (("n1",), {}, "no settings given"),
    ((), {"volume": "1"}, "no node selected"),
])
def test_bad_commands_are_refused_by_name_and_journal_nothing(db, targets, settings, message):
    before = db.last_index
    with pytest.raises(GridError, match=message):
        db.execute(SetSettings(targets, settings))
    assert db.last_index == before


def test_presets_define_apply_delete(db):
    db.execute(DefinePreset("evening", {"content": "evening news", "brightness": "30"}))
    assert db.execute(ApplyPreset("evening", ("row:3",))) == ["n7", "n8", "n9"]
    assert desired(db, "n8") == {"content": "evening news", "brightness": 30}
    with pytest.raises(GridError, match="no preset 'morning' \\(presets: evening\\)"):
        db.execute(ApplyPreset("morning", ("all",)))
    with pytest.raises(GridError, match="preset name"):
        db.execute(DefinePreset("bad name!", {"volume": "1"}))
    db.execute(DeletePreset("evening"))
    assert db.query(GridView())["presets"] == {}
    assert desired(db, "n8") == {"content": "evening news", "brightness": 30}  # applied settings stay


def test_add_remove_move_nodes(db):
    db.execute(RemoveNode("n9"))
    with pytest.raises(GridError, match=r"position \(3, 4\) is outside the 3x3 grid"):
        db.execute(MoveNode("n1", 3, 4))
    with pytest.raises(GridError, match=r"position \(1, 2\) is taken by n2"):
        db.execute(MoveNode("n1", 1, 2))
    db.execute(MoveNode("n8", 3, 3))
    db.execute(AddNode("n10", "10.0.0.10:7100", 3, 2))
    with pytest.raises(GridError, match="already in the grid"):
        db.execute(AddNode("n10", "10.0.0.10:7100", 3, 2))
    with pytest.raises(GridError, match="must be HOST:PORT"):
        db.execute(AddNode("n11", "nowhere", 1, 1))
    view = db.query(GridView())
    assert {(n["id"], n["row"], n["column"]) for n in view["nodes"]} >= {("n8", 3, 3), ("n10", 3, 2)}
    assert "n9" not in {n["id"] for n in view["nodes"]}


def test_layout_keeps_settings_of_nodes_that_stay(db):
    db.execute(SetSettings(("n1", "n9"), {"volume": "5"}))
    smaller = ApplyLayout(2, 2, (NodeSpec("n1", "127.0.0.1:7101", 2, 2), NodeSpec("n2", "127.0.0.1:7102", 1, 1),
                                 NodeSpec("x", "127.0.0.1:7200", 1, 2)), "d2")
    result = db.execute(smaller)
    assert result == {"added": ["x"], "removed": ["n3", "n4", "n5", "n6", "n7", "n8", "n9"], "changed": ["n1", "n2"]}
    assert desired(db, "n1") == {"volume": 5}
    with pytest.raises(LayoutUnchanged):
        db.execute(smaller)
    with pytest.raises(GridError, match=r"nodes a and b are both at \(1, 1\)"):
        db.execute(ApplyLayout(2, 2, (NodeSpec("a", "h:1", 1, 1), NodeSpec("b", "h:2", 1, 1)), "d3"))


def test_a_refused_layout_edit_is_in_the_state_until_a_valid_layout_is_applied(db):
    """Issue 16: a refused edit was only in the node logs; operators read the state."""
    assert db.query(GridView())["layout_refused"] is None
    db.execute(RefuseLayout("n3", "layout.toml: nodes n1 and n10 are both at (1, 1)", "bad1"))
    refused = db.query(GridView())["layout_refused"]
    assert (refused["node"], refused["reason"]) == ("n3", "layout.toml: nodes n1 and n10 are both at (1, 1)")
    assert refused["at"]  # when, in the journal's time
    before = db.last_index
    with pytest.raises(LayoutUnchanged):  # the same file seen by another node's watcher
        db.execute(RefuseLayout("n7", "layout.toml: nodes n1 and n10 are both at (1, 1)", "bad1"))
    assert db.last_index == before
    # the file saved back as it was: the layout it names is applied already, but the
    # refusal goes (nothing else changes)
    assert db.execute(LAYOUT) == {"added": [], "removed": [], "changed": []}
    assert db.query(GridView())["layout_refused"] is None
    with pytest.raises(LayoutUnchanged):
        db.execute(LAYOUT)


def test_observations_track_health_and_clear_actual_when_down(db):
    db.execute(MarkNode("n1", True, {"volume": "40"}, "boot1", "settings pushed"))
    n1 = db.query(NodeDetail("n1"))
    assert (n1["health"], n1["actual"], n1["boot"]) == ("up", {"volume": 40}, "boot1")
    since = n1["since"]
    db.execute(MarkNode("n1", True, {"volume": "41"}, "boot1", ""))
    assert db.query(NodeDetail("n1"))["since"] == since  # still up: the health did not change
    db.execute(MarkNode("n1", False, None, "", "connect refused"))
    n1 = db.query(NodeDetail("n1"))
    assert (n1["health"], n1["actual"], n1["detail"], n1["in_sync"]) == ("down", None, "connect refused", False)


COMMANDS = st.one_of(
    st.builds(SetSettings, st.lists(st.sampled_from(["n1", "n5", "n9", "all", "row:1", "column:2", "n77"]),
                                    min_size=1, max_size=3).map(tuple),
              st.dictionaries(st.sampled_from(["power", "volume", "content", "bogus"]),
                              st.sampled_from(["on", "off", "7", "100", "300", "hello"]), max_size=3)),
    st.builds(DefinePreset, st.sampled_from(["p", "q"]), st.dictionaries(st.sampled_from(["volume", "power"]),
                                                                          st.sampled_from(["on", "3"]), max_size=2)),
    st.builds(ApplyPreset, st.sampled_from(["p", "q"]), st.sampled_from([("all",), ("row:3",), ("n2",)])),
    st.builds(MoveNode, st.sampled_from(["n1", "n4"]), st.integers(1, 4), st.integers(1, 4)),
    st.builds(MarkNode, st.sampled_from(["n2", "n3"]), st.booleans(), st.just({"volume": "3"}), st.just("b")),
    st.builds(RefuseLayout, st.sampled_from(["n1", "n2"]), st.just("bad"), st.sampled_from(["x", "y"])),
    st.just(LAYOUT),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(COMMANDS, max_size=25))
def test_replay_rebuilds_exactly_the_same_grid(tmp_path_factory, commands):
    path = str(tmp_path_factory.mktemp("grid"))
    with prevalence.open(path, Grid) as db:
        db.execute(LAYOUT)
        for tx in commands:
            try:
                db.execute(tx)
            except GridError:
                pass  # refused: nothing journaled
        live = db.query(GridView())
    with prevalence.open(path, Grid) as db:
        assert db.query(GridView()) == live


def test_layout_file_round_trips_through_the_parser():
    from app.layout import render_layout

    text = render_layout(3, 3, list(LAYOUT.nodes)).encode()
    parsed = parse_layout(text)
    assert (parsed.rows, parsed.columns, parsed.nodes) == (3, 3, LAYOUT.nodes)
