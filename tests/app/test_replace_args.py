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
