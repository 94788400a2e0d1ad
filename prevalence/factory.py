"""Finding the application's code from a ``MODULE:NAME`` string (configs and the CLI)."""
from __future__ import annotations

import importlib
import os
import traceback
from typing import Any

from .errors import PrevalenceError


def load_object(spec: str) -> Any:
    """Import ``package.module:attribute`` and return the attribute."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise PrevalenceError(f"expected MODULE:NAME (for example myapp.model:Bank), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PrevalenceError(f"cannot import module {module_name!r} (from {spec!r}): {exc}") from exc
    except Exception as exc:  # the module itself fails (a syntax error, a raise at import): say where
        raise PrevalenceError(f"cannot import module {module_name!r} (from {spec!r}): "
                              f"{type(exc).__name__}: {_with_place(exc)}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PrevalenceError(f"module {module_name!r} has no attribute {attr!r} (from {spec!r})") from None
    return obj


def _with_place(exc: Exception) -> str:
    """The error's message with the file and line it was raised at, for one line of output."""
    if isinstance(exc, SyntaxError):
        return str(exc)  # already "invalid syntax (app.py, line 3)"
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return str(exc)
    return f"{exc} ({os.path.basename(frames[-1].filename)}, line {frames[-1].lineno})"
