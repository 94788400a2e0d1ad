"""prevalence.open on a path the engine cannot use: one PrevalenceError naming it."""
from __future__ import annotations

import pytest

import prevalence
from tests.prevalence.domain import Put, Store


@pytest.mark.parametrize("blocker", [".", "journal", "snapshots"])
def test_a_file_where_a_directory_belongs_is_a_prevalence_error(tmp_path, blocker):
    """Seen: a bare FileExistsError ('[Errno 17] File exists') from os.makedirs, not a
    PrevalenceError, when the data path, its journal/ or its snapshots/ is a file."""
    data = tmp_path / "data"
    if blocker == ".":
        data.write_text("not a directory")
        where = data
    else:
        data.mkdir()
        (data / blocker).write_text("not a directory")
        where = data / blocker
    with pytest.raises(prevalence.PrevalenceError, match=f"cannot open {data}: {where}: "):
        prevalence.open(data, Store)
    if blocker != ".":
        (data / blocker).unlink()
        with prevalence.open(data, Store) as db:  # the directory lock was released
            db.execute(Put("a", 1))


def test_a_query_given_to_execute_or_a_transaction_to_query_is_named(tmp_path):
    """Seen: AttributeError "'Get' object has no attribute 'check'" (and "... 'run'"),
    not a PrevalenceError saying which call the object belongs to."""
    from tests.prevalence.domain import Get

    with prevalence.open(tmp_path, Store) as db:
        with pytest.raises(prevalence.CodecError, match=r"test\.Get is a Query, not a Transaction: .*query\(\)"):
            db.execute(Get("a"))
        with pytest.raises(prevalence.PrevalenceError, match=r"test\.Put is a Transaction, not a Query: .*execute\(\)"):
            db.query(Put("a", 1))
        with pytest.raises(prevalence.PrevalenceError, match="has no run"):
            db.query(object())
        assert db.last_index == 0
        assert db.query(type("Adhoc", (), {"run": lambda self, root: 7})()) == 7  # any object with run(root)
