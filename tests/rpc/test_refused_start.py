"""A node that refuses to start must end with its one line, not abort: sender threads
started before the refusal kept dialling and logging while the interpreter shut down,
and CPython then aborts ("Fatal Python error: _enter_buffered_busy ... daemon threads",
SIGABRT), leaving a crash dump as the log's last words instead of the reason."""
from __future__ import annotations

import threading
import time

import pytest

from prevalence.errors import PrevalenceError
from rpc.cluster import free_port_block, node_config_paths, write_cluster
from rpc.config import load_config
from rpc.server import NodeProcess
from rpc.transport import TransportError
from replication.journal_storage import HardStateFile
from replication.messages import HardState


def _senders() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rpc-send-") and t.is_alive()]


def test_a_refused_start_leaves_no_sender_thread_running(tmp_path):
    directory = str(tmp_path / "c")
    write_cluster(directory, 3, free_port_block(3), "tests.prevalence.domain:Store")
    cfg = load_config(node_config_paths(directory)[0])
    # its raft-state says it voted in term 3 and held entries up to 7, its journal is
    # empty: its log was lost while it was stopped, and the start is refused
    HardStateFile(cfg.data).store(HardState(3, "n2", 7))
    before = set(_senders())
    with pytest.raises(PrevalenceError, match="rebuild"):
        NodeProcess(cfg)
    deadline = time.monotonic() + 0.5
    while set(_senders()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not set(_senders()) - before, "sender threads still dial the peers after the node refused to start"


def test_a_node_whose_port_is_taken_says_so_and_leaves_no_sender_thread_running(tmp_path):
    """The same for a refusal in start(): another program listens on the node's port."""
    import socket

    directory = str(tmp_path / "c")
    write_cluster(directory, 3, free_port_block(3), "tests.prevalence.domain:Store")
    cfg = load_config(node_config_paths(directory)[0])
    squatter = socket.create_server(cfg.listen)
    try:
        before = set(_senders())
        process = NodeProcess(cfg)
        with pytest.raises(TransportError, match="cannot listen on .*in use"):
            process.start()
        deadline = time.monotonic() + 0.5
        while set(_senders()) - before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not set(_senders()) - before, "sender threads still dial the peers after the start failed"
        NodeProcess(cfg)._abandon()  # and its data lock was released: a second try opens the data
    finally:
        squatter.close()
