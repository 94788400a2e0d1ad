"""Transactions and queries as plain data: a stable type name, a schema version, fields.

Decoding never runs code: a name is looked up among classes the application defined
(subclasses register themselves), and fields are built by cattrs with strict scalar
checks, so bytes from a client cannot construct anything the application did not declare.
"""
from __future__ import annotations

import dataclasses
import reprlib
import threading
from typing import Any, Callable

import attrs
import cattrs
import msgpack
from cattrs.preconf.msgpack import make_converter

from .errors import CodecError
from .text import error_text

__all__ = ["CODEC", "Codec", "TypeSpec", "pack_reply", "type_name_of", "unpack", "unpack_reply"]


def _strict(expected: type, *also: type) -> Callable[[Any, type], Any]:
    accepted = (expected, *also)

    def structure(value: Any, _cls: type) -> Any:
        # bool is an int subclass; a True where a number belongs is a client bug, not a 1.
        if isinstance(value, accepted) and not (isinstance(value, bool) and expected is not bool):
            return value
        raise TypeError(f"expected {expected.__name__}, got {type(value).__name__}")

    return structure


def _make_converter(detailed: bool = True) -> cattrs.Converter:
    conv = make_converter(forbid_extra_keys=True, detailed_validation=detailed)
    conv.register_structure_hook(int, _strict(int))
    conv.register_structure_hook(float, _strict(float, int))
    conv.register_structure_hook(str, _strict(str))
    conv.register_structure_hook(bool, _strict(bool))
    conv.register_structure_hook(bytes, _strict(bytes))
    return conv


class TypeSpec:
    """How one registered class is turned into plain data and back (built on first use)."""

    __slots__ = ("cls", "name", "version", "unstructure", "structure", "structure_quick")

    def __init__(self, cls: type, converter: cattrs.Converter, quick: cattrs.Converter | None = None):
        if not (dataclasses.is_dataclass(cls) or attrs.has(cls)):
            raise CodecError(
                f"{cls.__module__}.{cls.__qualname__} must be a dataclass or an attrs class "
                "(decorate it with @dataclass(frozen=True) or @attrs.frozen)"
            )
        if not _is_frozen(cls):
            raise CodecError(
                f"{cls.__module__}.{cls.__qualname__} must be frozen: a journaled object "
                "must not change after it was written (use @dataclass(frozen=True) or @attrs.frozen)"
            )
        self.cls = cls
        self.name: str = cls.__prevalence_name__  # type: ignore[attr-defined]
        self.version: int = cls.__prevalence_version__  # type: ignore[attr-defined]
        self.unstructure = converter.get_unstructure_hook(cls)
        self.structure = converter.get_structure_hook(cls)
        # stops at the first field that does not fit: detailed validation keeps an
        # exception (and its traceback) per wrong item and formats each of them, so a
        # 1 MiB list of a million wrong items took 15 s and 1.7 GB to refuse
        self.structure_quick = (quick or converter).get_structure_hook(cls)


def _is_frozen(cls: type) -> bool:
    if dataclasses.is_dataclass(cls):
        return cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    return getattr(cls.__setattr__, "__name__", "") == "_frozen_setattrs"


def type_name_of(cls: type) -> str:
    return cls.__prevalence_name__  # type: ignore[attr-defined]


class Codec:
    """Registry of encodable classes plus the converter that (de)structures them."""

    def __init__(self) -> None:
        self._classes: dict[str, type] = {}
        self._specs: dict[type, TypeSpec] = {}
        self._lock = threading.Lock()
        self.converter = _make_converter()
        self._quick = _make_converter(detailed=False)

    def register(self, cls: type) -> None:
        """Called for every subclass of Transaction and Query as it is created."""
        name = cls.__prevalence_name__  # type: ignore[attr-defined]
        with self._lock:
            old = self._classes.get(name)
            # A class decorated with @dataclass(slots=True) is created twice under one
            # qualified name, and a reloaded module redefines its classes: the newest wins.
            if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
                raise CodecError(
                    f"type name {name!r} of {cls.__module__}.{cls.__qualname__} is already used by "
                    f"{old.__module__}.{old.__qualname__}; give one of them another name=..."
                )
            self._classes[name] = cls
            if old is not None:
                self._specs.pop(old, None)

    def spec(self, cls: type) -> TypeSpec:
        spec = self._specs.get(cls)
        if spec is None:
            if not hasattr(cls, "__prevalence_name__"):
                raise CodecError(
                    f"{cls.__module__}.{cls.__qualname__} is neither a prevalence.Transaction nor a prevalence.Query"
                )
            try:
                spec = TypeSpec(cls, self.converter, self._quick)
            except CodecError:
                raise
            except Exception as exc:  # noqa: BLE001 - cattrs finds no hook for a field's type
                raise CodecError(f"{cls.__prevalence_name__}: a field's type has no plain form: "  # type: ignore[attr-defined]
                                 f"{error_text(exc)}") from None
            self._specs[cls] = spec
        return spec

    def registered(self) -> list[type]:
        """Every Transaction and Query class registered so far."""
        with self._lock:
            return list(self._classes.values())

    def lookup(self, name: str) -> type:
        cls = self._classes.get(name)
        if cls is None:
            raise CodecError(
                f"unknown type {name!r}: no Transaction or Query of that name is defined "
                "(is the module that defines it imported?)"
            )
        return cls

    # -- plain data -------------------------------------------------------------------
    def to_plain(self, obj: Any) -> list:
        """``[type name, version, fields]``: what the journal and the wire carry."""
        spec = self.spec(type(obj))
        try:
            fields = spec.unstructure(obj)
        except Exception as exc:  # a field holding something with no plain form
            raise CodecError(f"{spec.name}: cannot encode: {exc}") from exc
        return [spec.name, spec.version, fields]

    def journal_copy(self, obj: Any) -> tuple[list, Any, int]:
        """``obj``'s plain form, the object a replay decodes from it, and the length of
        its msgpack encoding.

        The engine applies the copy, not ``obj``: what the first run sees is then what
        every replay sees (a datetime in another zone comes back in UTC, a list field is
        not the caller's list), and an object that cannot come back (an int past 64 bits,
        a dict with tuple keys, a datetime past year 9999) is refused before anything is
        journaled instead of making the journal unreadable.
        """
        plain = self.to_plain(obj)
        try:
            data = msgpack.packb(plain, use_bin_type=True)
        except Exception as exc:  # noqa: BLE001 - TypeError, OverflowError, ValueError
            raise CodecError(f"{plain[0]}: cannot encode: {error_text(exc)}") from None
        try:
            return plain, self.from_plain(unpack(data)), len(data)
        except CodecError as exc:
            raise CodecError(f"{plain[0]}: would not read back from the journal: {exc}") from None

    def from_plain(self, plain: Any, detail: bool = True) -> Any:
        """The object; ``detail``: a refusal names every field that does not fit (what
        that costs grows with the number of wrong items, so not for large input)."""
        if not (isinstance(plain, (list, tuple)) and len(plain) == 3):
            raise CodecError(f"malformed object: expected [type, version, fields], got {_short(plain)}")
        name, version, fields = plain
        if not isinstance(name, str):
            raise CodecError(f"malformed object: type name must be a string, got {_short(name)}")
        cls = self.lookup(name)
        spec = self.spec(cls)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CodecError(f"{name}: malformed version {_short(version)}")
        if not isinstance(fields, dict):
            raise CodecError(f"{name}: fields must be a mapping, got {_short(fields)}")
        if version != spec.version:
            fields = self._upgrade(spec, version, fields)
        try:
            return spec.structure_quick(fields, cls)
        except MemoryError:  # this process's state, not the data's: an entry read again may decode
            raise
        except Exception as exc:  # noqa: BLE001 - a hook may raise anything: a refusal either way
            if not detail:
                raise CodecError(f"{name}: fields do not fit: {error_text(exc)}") from None
        try:  # refused: again, for every reason why
            return spec.structure(fields, cls)
        except cattrs.BaseValidationError as exc:
            problems = "; ".join(m.replace(" @ $", " at " + name, 1) for m in cattrs.transform_error(exc))
            raise CodecError(f"{name}: fields do not fit: {problems}") from None
        except Exception as exc:  # noqa: BLE001 - a hook may raise anything: a refusal either way
            raise CodecError(f"{name}: fields do not fit: {exc}") from None

    def _upgrade(self, spec: TypeSpec, version: int, fields: dict) -> dict:
        if version > spec.version:
            raise CodecError(
                f"{spec.name}: written as version {version}, but this program only knows "
                f"versions up to {spec.version} (run a newer release)"
            )
        upgrade = getattr(spec.cls, "upgrade", None)
        if upgrade is None:
            raise CodecError(
                f"{spec.name}: written as version {version}, the class is version {spec.version} "
                "and defines no upgrade(fields, version) classmethod"
            )
        try:
            new = upgrade(dict(fields), version)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a hook may raise anything: a refusal either way
            raise CodecError(f"{spec.name}: upgrade from version {version} failed: {exc!r}") from exc
        if not isinstance(new, dict):
            raise CodecError(f"{spec.name}: upgrade from version {version} must return a dict")
        return new

    # -- bytes ------------------------------------------------------------------------
    def dumps(self, obj: Any) -> bytes:
        return msgpack.packb(self.to_plain(obj), use_bin_type=True)

    def loads(self, data: bytes) -> Any:
        return self.from_plain(unpack(data), detail=len(data) <= DETAILED_ERRORS_MAX)


#: Bytes of a message at most whose refusal names every field that does not fit.
DETAILED_ERRORS_MAX = 4096


def unpack(data: bytes) -> Any:
    """msgpack decoding with the error turned into a CodecError; no extension types."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except MemoryError:  # not malformed: a replica that meets it stops and decodes it again at its restart
        raise
    except Exception as exc:
        raise CodecError(f"malformed message ({len(data)} bytes): {exc}") from None


def unpack_reply(data: bytes) -> Any:
    """A reply (a client's reading of a node's answer) or a snapshot's metadata (which
    holds the sessions' last replies): map keys of any kind msgpack reads back, as a
    command's (:func:`unpack`), so that a result {1: 'one'} reads as it was made."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def pack_reply(value: Any) -> bytes:
    """``value`` packed as a reply, checked to read back as :func:`unpack_reply` reads
    it: a map with a tuple key packs (as an array) but reads back as an unhashable list,
    and a cached reply no reader takes made every snapshot holding it unreadable.
    Raises what msgpack raises (TypeError, ValueError, OverflowError)."""
    data = msgpack.packb(value, use_bin_type=True)
    if not _flat(value):  # only a map can fail to come back: no second pass for the common reply
        unpack_reply(data)
    return data


_SCALARS = (type(None), bool, int, float, str, bytes)


def _flat(value: Any) -> bool:
    """A scalar, or a tuple or list of scalars (a reply ``("ok", 3)``): holds no map."""
    if type(value) in _SCALARS:
        return True
    return type(value) in (tuple, list) and all(type(v) in _SCALARS for v in value)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 40, 40


def _short(value: Any) -> str:
    """A value for an error message: depth-limited, so hostile nesting cannot make the
    message itself fail (a plain repr() raised RecursionError at ~1000 levels)."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named
        text = f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


CODEC = Codec()  # the process-wide registry every Transaction and Query joins
