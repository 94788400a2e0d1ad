"""grid replace with wrong arguments: refused before anything is changed (the node stays
a member, its data and config where they were), in one line naming the argument."""
from __future__ import annotations

import os

import pytest

from app.cli import main
from app.local import write_grid
from app.replace import ReplaceRefused, replace_node


@pytest.fixture
def grid_dir(tmp_path):
    write_grid(str(tmp_path), 2, 2, base_port=47800)
    os.makedirs(tmp_path / "n2", exist_ok=True)  # its data directory, as a stopped node leaves it
    return tmp_path


def _untouched(d) -> bool:
    return (d / "n2.toml").is_file() and (d / "n2").is_dir() and not any(".replaced-" in n for n in os.listdir(d))


@pytest.mark.parametrize("node_id, address, message", [
    ("n2", "nonsense", "--address: expected \"HOST:PORT\", got 'nonsense'"),
    ("n2", "127.0.0.1:99999", "--address: expected"),
    ("n2", "0.0.0.0:47900", "--address: '0.0.0.0:47900' listens on every interface"),
    ("n2", "127.0.0.1:47800", "--address 127.0.0.1:47800 is where n1 listens"),
    ("n1/../n2", "127.0.0.1:47900", "no node 'n1/../n2' configured"),
    ("../n2", "127.0.0.1:47900", "no node '../n2' configured"),
])
def test_wrong_arguments_are_refused_before_any_change(grid_dir, node_id, address, message):
    with pytest.raises(ReplaceRefused, match=message.replace("(", r"\(").replace(".", r"\.")):
        replace_node(str(grid_dir), node_id, address, progress=lambda line: None)
    assert _untouched(grid_dir)


@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "inf"])
def test_a_catch_up_limit_that_is_not_a_duration_is_refused(grid_dir, capsys, timeout):
    with pytest.raises(SystemExit):
        main(["replace", "n2", "--address", "127.0.0.1:47900", "--cluster", str(grid_dir), "--timeout", timeout])
    assert "--timeout" in capsys.readouterr().err and _untouched(grid_dir)


def test_an_id_that_cluster_add_refuses_is_refused_before_the_node_is_removed(grid_dir, monkeypatch):
    """A node id with a space was always a valid config id, but `cluster add` (step 3 of
    grid replace) now takes only letters, digits, '_', '.' and '-': the node was removed
    from the membership and its data and config moved aside, then the add refused it,
    leaving it out of the grid with no config for a second try."""
    import rpc.admin
    import rpc.cluster

    path = grid_dir / "n2.toml"
    path.write_text(path.read_text().replace('id = "n2"', 'id = "n 2"').replace('"n2" =', '"n 2" ='))
    calls = []
    monkeypatch.setattr(rpc.cluster, "cluster_status_full", lambda d, timeout=None: [
        {"id": "n1", "role": "leader", "term": 2, "voters": ["n1", "n 2", "n3", "n4"], "learners": []},
        {"id": "n3", "role": "follower", "term": 2, "voters": ["n1", "n 2", "n3", "n4"], "learners": []},
        {"id": "n4", "role": "follower", "term": 2, "voters": ["n1", "n 2", "n3", "n4"], "learners": []}])
    monkeypatch.setattr(rpc.admin, "admin", lambda *a, **k: calls.append(a))
    with pytest.raises(ReplaceRefused, match="nothing changed"):
        replace_node(str(grid_dir), "n 2", "127.0.0.1:47900", progress=lambda line: None)
    assert calls == [] and path.is_file() and (grid_dir / "n2").is_dir()
    assert not any(".replaced-" in n for n in os.listdir(grid_dir))


def test_the_address_another_node_is_dialled_at_is_refused_before_the_node_is_removed(grid_dir, monkeypatch):
    """n1 listens on 0.0.0.0 and is dialled at its [peers] entry (NodeConfig.address):
    the early check compared --address with listen only, so the removal and the wipe ran
    and cluster add (which compares the dialled address) refused it afterwards."""
    import rpc.admin
    import rpc.cluster

    n1 = grid_dir / "n1.toml"
    n1.write_text(n1.read_text().replace('listen = "127.0.0.1:47800"', 'listen = "0.0.0.0:47800"'))
    calls = []
    rows = [{"id": n, "role": "leader" if n == "n1" else "follower", "term": 2,
             "voters": ["n1", "n2", "n3", "n4"], "learners": []} for n in ("n1", "n3", "n4")]
    monkeypatch.setattr(rpc.cluster, "cluster_status_full", lambda d, timeout=None: rows)
    monkeypatch.setattr(rpc.admin, "admin", lambda *a, **k: calls.append(a))
    with pytest.raises(ReplaceRefused, match="nothing changed"):
        replace_node(str(grid_dir), "n2", "127.0.0.1:47800", progress=lambda line: None)
    assert calls == [] and _untouched(grid_dir)


def test_an_address_the_layout_cannot_hold_is_refused_before_the_node_is_removed(grid_dir, monkeypatch):
    """The replacement's address is written into the grid's layout too (its agent moves
    there): one that rpc takes but the layout refuses (a non-ASCII host name) was found
    out only after the removal, the wipe and the add, as a layout every node refused."""
    import rpc.admin
    import rpc.cluster

    calls = []
    rows = [{"id": n, "role": "leader" if n == "n1" else "follower", "term": 2,
             "voters": ["n1", "n2", "n3", "n4"], "learners": []} for n in ("n1", "n3", "n4")]
    monkeypatch.setattr(rpc.cluster, "cluster_status_full", lambda d, timeout=None: rows)
    monkeypatch.setattr(rpc.admin, "admin", lambda *a, **k: calls.append(a))
    with pytest.raises(ReplaceRefused, match="nothing changed.*must be HOST:PORT"):
        replace_node(str(grid_dir), "n2", "pc-\u00e4.local:47900", progress=lambda line: None)
    assert calls == [] and _untouched(grid_dir)
