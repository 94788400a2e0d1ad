"""What the nodes say about themselves, as an operator reads it: every node's status asked
at once, the table's rows, the causes of silence each said once, and who is master, or
why there is none.

The last is what an operator needs when a command gets no answer: "no master answered"
is true but does not say whether to wait (an election is under way), to look at one
node (the leader others follow does not answer here) or to bring nodes back (too few
voters answer to elect anyone).
"""
from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from ssl import SSLContext
from typing import Any

from prevalence.errors import PrevalenceError
from prevalence.text import one_line
from replication.client_policy import shown
from replication.node import STATUS_TIMEOUT
from rpc.transport import STATUS_MAX_FRAME, NodeLink

__all__ = ["FIELDS", "ask_status", "collapse_causes", "describe_master", "status_row",
           "unreachable_summary", "why_no_status", "other_releases"]

#: The status table's columns (``prevalence status``).
FIELDS = ("id", "address", "role", "term", "commit_index", "applied_index", "pid", "config", "reachable")


def ask_status(targets: list[tuple[tuple[str, int], SSLContext | None]], secret: bytes,
               timeout: float | None) -> list[list | Exception]:
    """Every node's answer to ``status`` (targets: address and client TLS context), or
    why there is none; asked at once, so that nodes that do not answer cost one timeout
    in all, not one each. By default (``timeout`` None) the connection may take 1 s and
    the request the node's own STATUS_TIMEOUT and a little more: a node whose Raft loop
    hangs answers that it does, and is not taken for one that does not answer at all."""
    connect, request = (1.0, STATUS_TIMEOUT + 0.5) if timeout is None else (timeout, timeout)

    def ask(target: tuple[tuple[str, int], SSLContext | None]) -> list | Exception:
        try:
            with NodeLink(target[0], secret, ident="status", timeout=request, connect_timeout=connect,
                          ssl_context=target[1], max_frame=STATUS_MAX_FRAME, frame_timeout=request) as link:
                reply = link.call("status")
        except Exception as exc:  # noqa: BLE001 - why this node gave no status
            return exc
        if type(reply) is list and len(reply) == 2 and reply[0] == "ok" and type(reply[1]) is dict:
            return reply
        if (type(reply) is list and len(reply) >= 2 and type(reply[0]) is str and reply[0] != "ok"
                and type(reply[-1]) is str):
            return [reply[0], one_line(reply[-1])]  # a refusal: its reason, for the operator
        return PrevalenceError(f"malformed status reply: {shown(reply)}")

    if not targets:
        return []
    with ThreadPoolExecutor(min(16, len(targets)), thread_name_prefix="status") as pool:
        return list(pool.map(ask, targets))


def status_row(node_id: str, address: str, config: str | None, reply: list | Exception) -> dict[str, Any]:
    """One row of the table from a node's answer: FIELDS, plus ``leader`` and ``voters``
    (whom it follows, who votes: what :func:`describe_master` reads), ``disk_full``, ``disk_stalled``,
    ``snapshot_error`` (why its snapshots fail, the journal growing meanwhile),
    ``apply_blocked`` (an entry its program cannot read: it applies nothing past it), and
    ``error`` (and ``answered``) when it gave no status."""
    row: dict[str, Any] = dict.fromkeys(FIELDS)
    row.update(id=node_id, address=address, config=config, reachable=False, leader=None, voters=[])
    if isinstance(reply, Exception):  # its text may be the other side's (a refusal, an RPyC error)
        row["error"] = one_line(str(reply), 500)
    elif reply[0] == "ok":
        st = reply[1]
        snap = st.get("snapshot_error")
        row.update({k: _field(st[k]) for k in FIELDS if k in st and k != "reachable"}, reachable=True,
                   disk_full=st.get("disk_full") is True, disk_stalled=_stalled(st.get("disk_stalled")),
                   snapshot_error=one_line(snap, 300) if type(snap) is str and snap else None,
                   apply_blocked=_apply_blocked(st.get("apply_blocked")))
        proto = st.get("peer_protocol")  # a node of a release before 6 says none
        row["peer_protocol"] = proto if type(proto) is int and 0 < proto < 1 << 16 else None
        if type(row["id"]) is not str or not row["id"]:  # describe_master names nodes by it
            row["id"] = node_id
        leader, voters = st.get("leader"), st.get("voters")
        row["leader"] = one_line(leader, 100) if type(leader) is str and leader else None
        if type(voters) is list and all(type(v) is str for v in voters):
            row["voters"] = [one_line(v, 100) for v in voters[:1000]]
    else:  # it answered, without a status (its Raft loop failed or hangs): say why
        row.update(answered=True, error=reply[-1])
    return row


def _stalled(value: Any) -> float:
    """Seconds a node's disk write has been under way (0: none that long), from its reply."""
    ok = type(value) in (int, float) and 0 < value < 1e9  # a hostile or older node's field: shown as none
    return float(value) if ok else 0.0


def describe_master(rows: list[dict]) -> str:
    """Who is master according to the nodes that answer, or why there is none, in one
    line: "n5 leads (term 2)", "n6, n7 follow n5 (term 2), which does not answer",
    "no master: 3 of the 9 voters answer (n6, n7, n9); electing one needs 5", ..."""
    answered = [r for r in rows if r["reachable"]]
    if not answered:
        return f"none of the {len(rows)} nodes answers"
    term = max(_term(r) for r in answered)  # a malformed term (the table shows it) counts as 0
    newest = [r for r in answered if _term(r) == term]
    leaders = sorted(r["id"] for r in newest if r["role"] == "leader")
    if leaders:
        return f"{', '.join(leaders)} lead{'s' if len(leaders) == 1 else ''} (term {term})"
    followed = Counter(r["leader"] for r in newest if r["leader"])
    if followed:
        leader, _ = followed.most_common(1)[0]
        who = sorted(r["id"] for r in newest if r["leader"] == leader)
        return f"{_names(who)} follow{'s' if len(who) == 1 else ''} {leader} (term {term}), which does not answer"
    # the newest configuration is the one of the longest log (a removed node that still
    # runs, or one behind, names an older one)
    voters = max(newest, key=lambda r: r["commit_index"] if type(r["commit_index"]) is int else -1)["voters"]
    if not voters:
        return f"no master: {len(answered)} of {len(rows)} nodes answer, none leads or knows a leader (term {term})"
    up = sorted(set(voters) & {r["id"] for r in answered})
    need = len(voters) // 2 + 1
    if len(up) < need:
        return (f"no master: {len(up)} of the {len(voters)} voters answer ({_names(up) or 'none'}); "
                f"electing one needs {need}")
    return (f"no master yet: {len(up)} of the {len(voters)} voters answer, enough to elect one; "
            f"an election is under way (term {term})")


def _term(row: dict) -> int:
    return row["term"] if type(row["term"]) is int else 0


def _names(ids: list[str], limit: int = 12) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _apply_blocked(value: Any) -> dict | None:
    """A node's ``apply_blocked`` (the entry its program cannot read), checked: the
    entry's index, the reason and the index its state is as of, or None."""
    if type(value) is not dict or type(value.get("index")) is not int or type(value.get("applied")) is not int:
        return None
    reason = value.get("reason")
    return {"index": value["index"], "reason": one_line(reason, 300) if type(reason) is str else None,
            "applied": value["applied"]}


def _field(value: Any) -> Any:
    """A status value as the table shows it: a plain scalar, else a bounded text."""
    if value is None or type(value) in (bool, int, float):
        return value
    return one_line(value, 200) if type(value) is str else shown(value)


_ADDRESS = r"(?:\[[^\]]+\]|[A-Za-z0-9_.-]+):\d+"
_CAUSE = re.compile(rf"^({_ADDRESS}):?\s+")
_SEPARATOR = re.compile(rf"[;,]\s+(?={_ADDRESS}[:\s])")


def collapse_causes(causes: str | list[str]) -> str:
    """The same cause, from many addresses and attempts, said once with a count:
    "authentication failed (...) (72 times, from 9 addresses)". ``causes`` is a list of
    "HOST:PORT: cause" texts, or one text of them joined by ", " or "; "."""
    items = _SEPARATOR.split(causes) if isinstance(causes, str) else list(causes)
    seen: dict[str, tuple[int, list[str]]] = {}
    for item in (i.strip() for i in items if i.strip()):
        m = _CAUSE.match(item)
        address, cause = (m.group(1), item[m.end():]) if m else ("", item)
        n, addresses = seen.get(cause, (0, []))
        seen[cause] = (n + 1, addresses + [address] if address and address not in addresses else addresses)
    parts = []
    for cause, (n, addresses) in seen.items():
        if n == 1:
            parts.append(f"{addresses[0]}: {cause}" if addresses else cause)
        else:
            where = f", from {len(addresses)} address{'es' if len(addresses) != 1 else ''}" if addresses else ""
            parts.append(f"{cause} ({n} times{where})")
    return "; ".join(parts)


def why_no_status(row: dict) -> str | None:
    """Why the node of ``row`` gave no status (its address, in the row already, taken off
    the cause); None when it gave one."""
    if row["reachable"]:
        return None
    error = row.get("error") or "no answer"
    m = _CAUSE.match(error)
    return error[m.end():] if m else error


def unreachable_summary(rows: list[dict]) -> str:
    """'unreachable: n1, n3: cannot connect: ...' with the nodes that share a cause on one
    line (the address, in the table already, taken off the cause); "no status: n2: ..."
    for a node that answered without one; "" if all gave their status."""
    causes: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        why = why_no_status(r)
        if why is not None:
            causes.setdefault(("no status" if r.get("answered") else "unreachable", why), []).append(r["id"])
    def who(ids: list[str]) -> str:
        return f"all {len(ids)} nodes" if len(ids) == len(rows) > 3 else ", ".join(ids)
    return "\n".join(f"{label}: {who(ids)}: {cause}" for (label, cause), ids in causes.items())


def other_releases(rows: list[dict]) -> list[tuple[str, str]]:
    """A node and a note for each node that answers and runs another release than most
    that answer (ties: than this program): nodes of two releases refuse each other's
    handshake, so each part elects without the other, or cannot. A node that names no
    ``peer_protocol`` in its status is of a release before 6."""
    from rpc.wire import PEER_PROTOCOL_VERSION

    kinds = Counter(r.get("peer_protocol") for r in rows if r["reachable"])
    if len(kinds) < 2:
        return []
    top = max(kinds.values())
    main = PEER_PROTOCOL_VERSION if kinds[PEER_PROTOCOL_VERSION] == top else kinds.most_common(1)[0][0]

    def said(proto: Any) -> str:
        return f"protocol {proto}" if proto is not None else "a protocol before 6"

    others = _names(sorted(r["id"] for r in rows if r["reachable"] and r.get("peer_protocol") == main))
    return [(r["id"], f"runs another release than {others} (it speaks {said(r.get('peer_protocol'))} to nodes, "
                      f"they {said(main)}): nodes of two releases refuse each other; stop every node and start "
                      "them all on one release, a full restart (docs/security.md)")
            for r in rows if r["reachable"] and r.get("peer_protocol") != main]
