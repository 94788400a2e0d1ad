"""journal dump shows a command entry of the wrong shape as undecodable, whatever it
holds: the checksum says the bytes are as written, not that they make sense."""
from __future__ import annotations

import json

import msgpack
import pytest

from prevalence.cli import main
from prevalence.journal import Journal

MALFORMED = [
    ["x", "t", 1, {}],  # a time that is no number
    [2**62, "t", 1, {}],  # past datetime's range
    [-(2**62), "t", 1, {}],
    [1.5, "t", 1, {}],
    [1, "t"],  # too short
    [1, 7, "v", []],  # type, version and fields of the wrong kinds
    {"not": "a list"},
]


@pytest.mark.parametrize("json_out", [False, True])
def test_malformed_command_entries_are_listed_as_undecodable(tmp_path, capsys, json_out):
    """Seen: a traceback ('TypeError: unsupported type for timedelta microseconds
    component: str') instead of the listing."""
    with Journal(str(tmp_path / "journal")) as j:
        for i, items in enumerate(MALFORMED, 1):
            j.append(i, 0, 1, msgpack.packb(items))
        j.append(len(MALFORMED) + 1, 0, 1, msgpack.packb([1_000_000, "t", 1, {"a": 1}]))
    assert main(["journal", "dump", str(tmp_path)] + (["--json"] if json_out else [])) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(MALFORMED) + 1
    for line in out[:-1]:
        assert "<undecodable>" in line, line
    if json_out:
        assert json.loads(out[-1])["time"] == "1970-01-01T00:00:01+00:00"
    else:
        assert out[-1].startswith(f"{len(MALFORMED) + 1}\t1970-01-01T00:00:01+00:00\tt\t")
