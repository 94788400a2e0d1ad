"""The node agent: the part of every PC that holds its actual settings, in memory only.

It is what the old node software was: it does what it is told and forgets everything
when it restarts (a new ``boot`` id says so). The master's controller reads it with
``status`` and sets it with ``apply``; both are calls on the node's client port
(``app_call``), so they need the client key like any other client.

Every push names its master's (epoch, term), a fencing token: once an agent has taken a
push from one master it refuses pushes of an older one, so a master that no longer leads
(paused, or left in an old epoch by ``grid recover`` and started again with its
neighbours) cannot undo what the current master set. ``agent.apply`` without a token (a
controller of an earlier release) is still taken.
"""
from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import msgpack

from app.settings import Value, normalize
from prevalence.errors import PrevalenceError
from prevalence.text import one_line
from rpc.config import parse_address
from rpc.transport import NodeLink

log = logging.getLogger("app.agent")


class AgentError(PrevalenceError):
    """An agent could not be reached, or refused what it was sent; the message says which.

    ``gone``: its host refused the connection, so no process listens there: down for
    sure, unlike a time-out, which may be a slow network."""

    def __init__(self, message: str, *, gone: bool = False):
        super().__init__(message)
        self.gone = gone


class Agent:
    def __init__(self, node_id: str):
        self.node_id = node_id
        self.boot = uuid.uuid4().hex[:12]
        self.settings: dict[str, Value] = {}
        self.pushes = 0
        self.fence = (0, 0)  # the (epoch, term) of the newest master that pushed here
        self._lock = threading.Lock()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"id": self.node_id, "boot": self.boot, "settings": dict(self.settings), "pushes": self.pushes}

    def apply(self, settings: dict[str, Any], fence: tuple[int, int] | None = None) -> dict[str, Any]:
        """Replace the settings (idempotent: the same push twice leaves the same state);
        refused from a master whose ``fence`` (epoch, term) is older than one seen here."""
        values = normalize(settings) if settings else {}
        with self._lock:
            if fence is not None:
                if fence < self.fence:
                    raise AgentError(f"superseded: agent {self.node_id} takes its settings from a master of epoch "
                                     f"{self.fence[0]}, term {self.fence[1]}, newer than this one's (epoch "
                                     f"{fence[0]}, term {fence[1]})")
                self.fence = fence
            if values != self.settings:
                self.settings = values
                self.pushes += 1
                log.info("agent %s now runs %s", self.node_id, values)
        return self.status()

    def register(self, handlers: dict) -> None:
        handlers["agent.status"] = lambda data: _pack(self.status())
        handlers["agent.apply"] = lambda data: _pack(self.apply(_unpack_settings(data)))
        handlers["agent.apply_fenced"] = lambda data: _pack(self.apply(*_unpack_fenced(data)))


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack_settings(data: bytes) -> dict[str, Any]:
    return _settings_map(_unpack(data))


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several types for bad bytes
        raise AgentError(f"settings are not valid msgpack: {one_line(str(exc), 100)}") from None


def _settings_map(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise AgentError(f"settings must be a map of names to values, got {type(value).__name__}")
    return value


def _unpack_fenced(data: bytes) -> tuple[dict[str, Any], tuple[int, int]]:
    """``{"settings": {...}, "epoch": E, "term": T}``, checked: it comes off the wire."""
    value = _unpack(data)
    if not isinstance(value, dict) or set(value) != {"settings", "epoch", "term"}:
        raise AgentError("a fenced push is a map of settings, epoch and term")
    fence = (value["epoch"], value["term"])
    if not all(type(v) is int and 0 <= v < 1 << 63 for v in fence):
        raise AgentError("a fenced push's epoch and term must be whole numbers from 0")
    return _settings_map(value["settings"]), fence


MAX_STATUS = 16 << 10  # bytes: four settings, an id and a boot id fit many times over


def _status(value: Any) -> dict[str, Any]:
    """An agent's status reply, checked: what the controller records comes from here."""
    if not isinstance(value, dict):
        raise ValueError(f"a status is a map, got {type(value).__name__}")
    settings = value.get("settings")
    if not all(isinstance(value.get(k), str) and len(value[k]) <= 64 and value[k].isprintable()
               for k in ("id", "boot")):
        raise ValueError("'id' and 'boot' must be short text")
    if not isinstance(settings, dict) or len(settings) > 32:
        raise ValueError("'settings' must be a map of at most 32 settings")
    for k, v in settings.items():
        if not isinstance(k, str) or len(k) > 64 or isinstance(v, bool) or not isinstance(v, (str, int)) \
                or isinstance(v, str) and (len(v) > 1000 or not v.isprintable()) or not k.isprintable():
            # printable: grid show and the window print it, and an escape sequence would drive the terminal
            raise ValueError(f"setting {one_line(repr(k), 40)}: must be a short name and a number or printable text")
    return value


class AgentLink:
    """The controller's connection to one agent (an ``rpc.transport.NodeLink``)."""

    def __init__(self, node_id: str, address: str, secret: bytes, *, timeout: float = 1.0, ssl_context=None):
        self.node_id, self.address, self.timeout = node_id, address, timeout
        self._link = NodeLink(parse_address(address, f"node {node_id}"), secret, ident="controller",
                              timeout=timeout, ssl_context=ssl_context)

    def status(self) -> dict[str, Any]:
        return self._call("agent.status", b"")

    def apply(self, settings: dict[str, Value], fence: tuple[int, int] | None = None) -> dict[str, Any]:
        """Push ``settings``; ``fence``: the pushing master's (epoch, term) (see the module)."""
        if fence is None:
            return self._call("agent.apply", _pack(settings))
        return self._call("agent.apply_fenced", _pack({"settings": settings, "epoch": fence[0], "term": fence[1]}))

    def _call(self, name: str, data: bytes) -> dict[str, Any]:
        try:
            reply = self._link.call("app_call", name, data)
        except Exception as exc:  # noqa: BLE001 - any failure on the wire means "unreachable now"
            text = str(exc)  # the transport's errors already start with the address
            if isinstance(exc, TimeoutError) and text in ("result expired", ""):  # RPyC's words for a hung PC
                text = f"no answer within {self.timeout:g} s (hung or overloaded)"
            where = "" if text.startswith(self.address) else f" at {self.address}"
            raise AgentError(f"agent {self.node_id}{where}: {text}", gone=getattr(exc, "refused", False)) from None
        if not isinstance(reply, (list, tuple)) or not reply:  # the transport gives a list
            raise AgentError(f"agent {self.node_id} at {self.address}: malformed reply to {name}")
        if reply[0] != "ok":
            raise AgentError(f"agent {self.node_id} at {self.address} refused {name}: {one_line(str(reply[-1]))}")
        body = reply[1] if len(reply) == 2 else None
        if not isinstance(body, bytes) or len(body) > MAX_STATUS:
            raise AgentError(f"agent {self.node_id} at {self.address}: malformed reply to {name}")
        try:
            return _status(msgpack.unpackb(body, raw=False))
        except Exception as exc:  # noqa: BLE001 - msgpack raises several types for bad bytes
            raise AgentError(f"agent {self.node_id} at {self.address}: malformed reply to {name}: "
                             f"{one_line(str(exc), 100)}") from None

    def close(self) -> None:
        self._link.close()
