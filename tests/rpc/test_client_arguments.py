"""A careless caller's arguments: each is refused at once by a PrevalenceError that names
the argument, before anything is sent (no node is needed: the address is never dialled)."""
from __future__ import annotations

import time

import pytest

import rpc
import rpc.client as rc
from prevalence.errors import PrevalenceError
from rpc.subscription import ClusterUnavailable
from tests.prevalence.domain import Add, Get

ADDR = "127.0.0.1:1"
KEY = b"k" * 32
BAD_TIMEOUTS = (0, -1, float("nan"), float("inf"), "5", True)


def _quick(f):
    began = time.monotonic()
    with pytest.raises(PrevalenceError) as info:
        f()
    assert time.monotonic() - began < 1.0
    assert "\n" not in str(info.value)
    return str(info.value)


def test_one_address_string_is_not_read_as_its_characters():
    msg = _quick(lambda: rpc.connect("127.0.0.1:7700", secret=KEY))
    assert "list" in msg and "'1'" not in msg


@pytest.mark.parametrize("name", ["timeout", "attempt_timeout"])
@pytest.mark.parametrize("bad", BAD_TIMEOUTS + (1e12,))
def test_connect_timeouts_are_positive_finite_seconds(name, bad):
    if name == "timeout" and bad == 1e12:
        rc.ClusterClient([ADDR], KEY, timeout=bad).close()  # long, but a deadline all the same
        return
    assert name in _quick(lambda: rc.ClusterClient([ADDR], KEY, **{name: bad}))


@pytest.mark.parametrize("name", ["max_batch", "max_batch_bytes"])
@pytest.mark.parametrize("bad", [0, -1, 1.5, None, "8"])
def test_batch_bounds_are_named_when_wrong(name, bad):
    assert name in _quick(lambda: rc.ClusterClient([ADDR], KEY, **{name: bad}))


@pytest.mark.parametrize("bad", BAD_TIMEOUTS)
def test_a_calls_own_timeout_is_checked_before_anything_is_sent(bad):
    c = rc.ClusterClient([ADDR], KEY)
    try:
        assert "timeout" in _quick(lambda: c.execute(Add("k", 1), timeout=bad))
        assert "timeout" in _quick(lambda: c.query(Get("k"), timeout=bad))
        assert "timeout" in _quick(lambda: c.execute_async(Add("k", 1), timeout=bad).result(1))
        assert "timeout" in _quick(lambda: c.query_async(Get("k"), timeout=bad).result(1))
    finally:
        c.close()


def test_a_query_given_to_execute_and_a_transaction_to_query_say_so():
    c = rc.ClusterClient([ADDR], KEY)
    try:
        assert "query" in _quick(lambda: c.execute(Get("k")))
        assert "query" in _quick(lambda: c.execute_async(Get("k")).result(1))
        assert "execute" in _quick(lambda: c.query(Add("k", 1)))
        assert "execute" in _quick(lambda: c.query_async(Add("k", 1)).result(1))
    finally:
        c.close()


def test_a_command_nested_too_deeply_to_encode_is_a_prevalence_error():
    nested: list = []
    inner = nested
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    c = rc.ClusterClient([ADDR], KEY)
    try:
        from tests.prevalence.domain import Tags
        assert "command" in _quick(lambda: c.execute(Tags("deep", tags=nested)))
        assert "query" in _quick(lambda: c.query(Get(nested)))
    finally:
        c.close()


@pytest.mark.parametrize("bad", [0, -5, "abc", 1.5, True, 2**70])
def test_subscribe_from_an_index_that_cannot_be_is_refused_not_polled_forever(bad):
    c = rc.ClusterClient([ADDR], KEY)
    try:
        assert "from_index" in _quick(lambda: c.subscribe(lambda e: None, from_index=bad))
        assert len(c._lines) == len(c._command_lines)  # no subscription line left open
    finally:
        c.close()


def test_subscribe_needs_a_callable():
    c = rc.ClusterClient([ADDR], KEY)
    try:
        assert "callback" in _quick(lambda: c.subscribe(None, from_index=1))
    finally:
        c.close()


def test_subscribe_on_a_closed_client_is_refused_like_every_other_call():
    c = rc.ClusterClient([ADDR], KEY)
    c.close()
    with pytest.raises(ClusterUnavailable, match="closed"):
        c.subscribe(lambda e: None, from_index=1)


@pytest.mark.parametrize("bad", BAD_TIMEOUTS)
def test_app_call_checks_its_timeout(bad):
    c = rc.ClusterClient([ADDR], KEY)
    try:
        assert "timeout" in _quick(lambda: c.app_call(ADDR, "x", timeout=bad))
    finally:
        c.close()


def test_app_call_refuses_what_a_node_would_only_drop_and_keeps_its_message_short():
    c = rc.ClusterClient([ADDR], KEY)
    try:
        assert "limit" in _quick(lambda: c.app_call(ADDR, "x", b"x" * (rc.MAX_REQUEST + 1)))
        assert "limit" in _quick(lambda: c.app_call(ADDR, "x" * (rc.MAX_REQUEST + 1)))
        assert len(_quick(lambda: c.app_call(ADDR, "x" * 100_000))) < 300
        assert "name" in _quick(lambda: c.app_call(ADDR, None))
    finally:
        c.close()


def test_connect_names_an_ssl_context_a_secret_file_or_addresses_of_the_wrong_type():
    assert "ssl_context" in _quick(lambda: rc.ClusterClient([ADDR], KEY, ssl_context="yes"))
    assert "secret_file" in _quick(lambda: rpc.connect([ADDR], secret_file=5))
    assert "addresses" in _quick(lambda: rpc.connect(None, secret=KEY))
    assert "addresses" in _quick(lambda: rpc.connect(7700, secret=KEY))
