"""What a session command's apply makes of results and errors that cannot travel: an
answer on every replica alike, never an exception out of the apply thread."""
from __future__ import annotations

from dataclasses import dataclass

import msgpack

import prevalence
from prevalence.codec import CODEC
from prevalence.sessions import RegisterSession
from prevalence.state import StateMachine, encode_command
from tests.prevalence.domain import Add, Store


class _Unshowable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


@dataclass(frozen=True)
class _FailsUnshowably(prevalence.Transaction, name="test.FailsUnshowably"):
    key: str

    def execute(self, root: Store, ctx: prevalence.Context) -> None:
        raise _Unshowable()


def entry(index: int, tx: object, session: tuple[int, int] | None = None) -> prevalence.Entry:
    return prevalence.Entry(index, 1, prevalence.EntryKind.COMMAND, encode_command(1, CODEC.to_plain(tx), session))


def test_a_result_past_64_bits_applies_and_is_answered_as_an_error_on_every_replica():
    replies = []
    for _ in range(2):  # two replicas of one log
        sm = StateMachine(Store())
        sm.apply_entry(entry(1, RegisterSession()), check=True)
        sm.apply_entry(entry(2, Add("x", (1 << 64) - 1), (1, 1)), check=True)
        reply, exc = sm.apply_entry(entry(3, Add("x", (1 << 64) - 1), (1, 2)), check=True)
        assert exc is None and reply[0] == "error" and "cannot be sent as plain data" in reply[1], reply
        assert sm.root.values["x"] == (1 << 65) - 2 and sm.applied_index == 3
        msgpack.packb(sm.sessions.to_plain())  # what a snapshot holds still packs
        replies.append(reply)
    assert replies[0] == replies[1]


def test_an_exception_whose_message_fails_is_named_by_its_type():
    sm = StateMachine(Store())
    sm.apply_entry(entry(1, RegisterSession()), check=True)
    reply, exc = sm.apply_entry(entry(2, _FailsUnshowably("k"), (1, 1)), check=True)
    assert exc is None and reply[0] == "failed" and reply[1].endswith("_Unshowable"), reply
    assert "_Unshowable" in reply[2] and sm.applied_index == 2


def test_a_session_id_is_registered_once():
    """Registering an id again would reset its numbers: a retry of its last command would
    apply twice. Refused at apply, the same on every replica."""
    sm = StateMachine(Store())
    token = (1 << 62) + 12345
    assert sm.apply_entry(entry(1, RegisterSession(token)), check=True) == (token, None)
    assert sm.apply_entry(entry(2, Add("x", 5), (token, 1)), check=True)[0] == ("ok", 5)
    result, exc = sm.apply_entry(entry(3, RegisterSession(token)), check=True)
    assert result is None and "already registered" in str(exc)
    assert sm.apply_entry(entry(4, Add("x", 5), (token, 1)), check=True)[0] == ("ok", 5)  # still the cached reply
    assert sm.root.values == {"x": 5}
    result, exc = sm.apply_entry(entry(5, RegisterSession(7)), check=True)  # not a minted id
    assert result is None and "2**62" in str(exc)


@dataclass(frozen=True)
class _KeyedResult(prevalence.Transaction, name="test.KeyedResult"):
    tuple_keys: bool

    def execute(self, root: Store, ctx: prevalence.Context) -> dict:
        return {(1, 2): "pair"} if self.tuple_keys else {1: "one", 2: "two"}


def test_a_result_with_int_or_tuple_keys_cannot_make_the_snapshot_unreadable():
    """A result {1: 'one'} packed, so the apply cached it; but the snapshot's metadata
    (which holds the sessions' last replies) was read with msgpack's defaults, which
    refuse map keys other than str or bytes: each replica's next snapshot was 'damaged
    metadata' at its restart. Int keys now read back (as in commands); a tuple key, which
    packs as an array and reads back as an unhashable list, is an error reply."""
    from prevalence.snapshots import decode_file, encode_file

    sm = StateMachine(Store())
    sm.apply_entry(entry(1, RegisterSession()), check=True)
    reply, exc = sm.apply_entry(entry(2, _KeyedResult(False), (1, 1)), check=True)
    assert exc is None and reply == ("ok", {1: "one", 2: "two"}), reply
    reply, exc = sm.apply_entry(entry(3, _KeyedResult(True), (1, 2)), check=True)
    assert exc is None and reply[0] == "error" and "cannot be sent as plain data" in reply[1], reply
    meta, body = sm.capture()
    restored = StateMachine.from_snapshot(decode_file("snap", b"".join(encode_file(meta, body)))[0], Store())
    assert restored.sessions.to_plain() == sm.sessions.to_plain()
