"""What a node can be told to do: a small, checked dict of settings.

Operators type ``volume=40``; the value is checked and normalised here, once, so the
replicated state only ever holds valid settings and every replica agrees on them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

Value = str | int


class SettingsError(ValueError):
    """A setting is unknown or its value is out of range; the message names which."""


@dataclass(frozen=True)
class Setting:
    name: str
    help: str
    parse: Callable[[Any], Value]


def _choice(*options: str) -> Callable[[Any], Value]:
    def parse(v: Any) -> Value:
        text = str(v).strip().lower()
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text
    return parse


def _number(low: int, high: int) -> Callable[[Any], Value]:
    def parse(v: Any) -> Value:
        if isinstance(v, bool):
            raise ValueError("must be a whole number")
        try:
            n = int(str(v).strip())
        except ValueError:
            raise ValueError(f"must be a whole number from {low} to {high}") from None
        if not low <= n <= high:
            raise ValueError(f"must be from {low} to {high}")
        return n
    return parse


def _text(limit: int) -> Callable[[Any], Value]:
    def parse(v: Any) -> Value:
        if not isinstance(v, (str, int)) or isinstance(v, bool):
            raise ValueError("must be text")
        text = str(v)
        if len(text) > limit or not text.isprintable():
            raise ValueError(f"must be printable text of at most {limit} characters")
        return text
    return parse


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("power", "on | off", _choice("on", "off")),
    Setting("content", "what the node shows (text, up to 200 characters)", _text(200)),
    Setting("volume", "0..100", _number(0, 100)),
    Setting("brightness", "0..100", _number(0, 100)),
)}


def _shown(value: Any, limit: int = 40) -> str:
    """``value`` quoted for an error message, cut short: an operator's 100 KB paste is named,
    not echoed back whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}... ({len(str(value))} characters)"


def normalize(settings: Mapping[str, Any]) -> dict[str, Value]:
    """Checked, typed settings; raises :class:`SettingsError` naming the first bad one."""
    if not settings:
        raise SettingsError("no settings given (known: " + ", ".join(SETTINGS) + ")")
    out: dict[str, Value] = {}
    for key, value in settings.items():
        spec = SETTINGS.get(key)
        if spec is None:
            raise SettingsError(f"unknown setting {_shown(key)} (known: {', '.join(SETTINGS)})")
        try:
            out[key] = spec.parse(value)
        except ValueError as exc:
            raise SettingsError(f"setting {key}={_shown(value)}: {exc}") from None
    return out


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``["volume=40", "content=news"]`` -> a dict, checked for the ``key=value`` shape."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"expected key=value, got {_shown(item)}")
        out[key.strip()] = value
    normalize(out)
    return out


def as_text(settings: Mapping[str, Value] | None) -> str:
    if not settings:
        return "-"
    return " ".join(f"{k}={settings[k]}" for k in sorted(settings))
