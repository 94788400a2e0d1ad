"""An application plugin for the client tests: handlers that say which node ran them."""
from __future__ import annotations


def attach(process, settings):
    node = process.cfg.id

    def whoami(data: bytes) -> bytes:
        return node.encode() + b":" + data

    def fail(data: bytes) -> bytes:
        raise ValueError(f"refused {data!r}")

    process.handlers["test.whoami"] = whoami
    process.handlers["test.fail"] = fail
