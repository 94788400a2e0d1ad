"""What a node's error reply becomes in the client: the transaction's own exception,
rebuilt only from a type this program may build (registered, builtin, the framework's,
or defined beside the application's transactions), else a RemoteTransactionError.
A module a node named is never imported."""
from __future__ import annotations

import builtins
import sys
from typing import Any

from prevalence.codec import CODEC
from prevalence.errors import PrevalenceError


class RemoteTransactionError(PrevalenceError):
    """A transaction's own exception whose type cannot be imported here."""

    def __init__(self, type_name: str, message: str, *, rejected: bool):
        kind = "rejected by check()" if rejected else "failed"
        super().__init__(f"{type_name}: {message} ({kind})")
        self.type_name, self.remote_message, self.rejected = type_name, message, rejected


_EXCEPTIONS: dict[str, type] = {}  # "module.QualName" -> class, see register_exception
_FRAMEWORK = ("prevalence", "replication", "rpc")
MAX_TYPE_NAME = 200  # characters of a remote type name kept in a RemoteTransactionError


def register_exception(cls: type) -> type:
    """Let the client raise ``cls`` itself when a node reports it (also a decorator).

    Without it, the client rebuilds only Python's builtin exceptions, the framework's,
    and those defined in a module that defines a registered Transaction or Query and
    that this program has imported; anything else is a :class:`RemoteTransactionError`.
    """
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        raise PrevalenceError(f"register_exception needs an Exception subclass, got {cls!r:.80}")
    _EXCEPTIONS[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _known_exception(type_name: str) -> type | None:
    """The exception class a node named, if this program may build it: registered,
    builtin, or defined beside the application's transactions. Looked up in modules
    already imported, through their ``__dict__`` only: nothing is imported or run."""
    cls = _EXCEPTIONS.get(type_name)
    if cls is not None:
        return cls
    allowed = {c.__module__ for c in CODEC.registered()}
    for dot in (i for i, ch in enumerate(type_name) if ch == "."):
        module_name, qual = type_name[:dot], type_name[dot + 1:]
        module = builtins if module_name == "builtins" else sys.modules.get(module_name)
        if module is None or not (module is builtins or module_name in allowed
                                  or module_name.split(".")[0] in _FRAMEWORK):
            continue
        obj: Any = module
        for part in qual.split("."):  # dictionary lookups only: no __getattr__ runs
            obj = vars(obj).get(part) if obj is module or isinstance(obj, type) else None
            if obj is None:
                break
        if isinstance(obj, type) and issubclass(obj, Exception):
            return obj
    return None


def remote_exception(kind: str, type_name: str, message: str) -> BaseException:
    """The exception a node reported, rebuilt only from a registered or builtin type
    (see :func:`register_exception`), else a RemoteTransactionError; never by importing
    the module the node named.

    ``exc.rejected`` is True when ``check()`` refused the transaction (nothing applied)
    and False when ``execute`` raised (its changes before raising stay applied).
    """
    rejected = kind == "rejected"
    name = type_name if type(type_name) is str else f"<{type(type_name).__name__}>"
    text = message if type(message) is str else f"<{type(message).__name__}>"
    well_formed = type(type_name) is str and type(message) is str and len(name) <= MAX_TYPE_NAME
    cls = _known_exception(name) if well_formed else None
    if cls is not None:
        try:
            exc = cls(text)
            exc.rejected = rejected  # type: ignore[attr-defined]
            return exc
        except Exception:  # noqa: BLE001 - not constructible from a message
            pass
    if len(name) > MAX_TYPE_NAME:
        name = name[:MAX_TYPE_NAME] + "..."
    return RemoteTransactionError(name, text, rejected=rejected)
