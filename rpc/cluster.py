"""A local cluster on one machine (``prevalence cluster up``): its files, its processes, its
scans of its directory; the status report itself is :mod:`rpc.status_report`, membership
administration :mod:`rpc.admin`."""
from __future__ import annotations

import glob
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import tomllib
from typing import Any

from prevalence._platform import NotRegularFile, ephemeral_ports, others_may_write, read_small_file
from prevalence.text import one_line
from replication.journal_storage import create_node_data, holds_node_data, new_cluster_id
from rpc.config import (
    MAX_CONFIG_BYTES, ConfigError, NodeConfig, format_address, load_config, migration_message, render_config,
    tls_contexts,
)
from rpc.secret import KEY_FILES, LEGACY_SECRET, SecretError, generate_secret_file, load_secret
from rpc.status_report import ask_status, status_row


def write_keys(directory: str) -> list[str]:
    """Make the key files of every role in ``directory`` that are missing; returns the
    names made. Existing ones are kept only in a directory no one else can write: a key
    file this command did not make there may be someone else's choice."""
    made, kept = [], []
    for name in KEY_FILES.values():
        path = os.path.join(directory, name)
        try:
            generate_secret_file(path)  # O_EXCL: never over a file someone put there
            made.append(name)
        except SecretError:
            if not os.path.isfile(path):
                raise
            kept.append(name)
    if kept:
        st = os.stat(directory)
        if others_may_write(st.st_mode, st.st_uid, os.geteuid() if hasattr(os, "geteuid") else -1):
            raise SecretError(f"{directory}: others can write this directory, so its {', '.join(kept)} may not be "
                              "ours: not reused (use a directory only you can write, or remove those files)")
    return made


def migrate_keys(directory: str) -> list[str]:
    """``prevalence cluster keys``: the key files of every role in ``directory`` (those
    missing are made), and its node configurations moved from the one shared
    cluster.secret to them (the ``secret_file`` line becomes the three key lines; nothing
    else in the file changes). Returns what was done, line by line. Run with every node
    stopped: a node of this version speaks only to nodes that hold the same keys."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)  # a set of keys to copy to the PCs
    done = [f"made {name}" for name in write_keys(directory)]
    keys = "\n".join(f'{role}_secret = "{name}"' for role, name in KEY_FILES.items())
    for path in sorted(glob.glob(os.path.join(directory, "*.toml"))):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: not UTF-8 text (byte {exc.start})") from None
        new, n = re.subn(r"^secret_file[ \t]*=.*$", lambda _m: keys, text, count=1, flags=re.M)
        if n:
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(new)
            os.replace(path + ".tmp", path)
            load_config(path)  # it reads as a node configuration again
            done.append(f"{os.path.basename(path)}: secret_file replaced by peer_secret, client_secret, admin_secret")
    legacy = os.path.join(directory, LEGACY_SECRET)
    if os.path.exists(legacy):
        os.remove(legacy)
        done.append(f"removed {LEGACY_SECRET} (no node accepts it any more: give operators {KEY_FILES['client']})")
    return done


def directory_key(directory: str, role: str) -> bytes:
    """The key of ``role`` in a cluster directory; a directory that still has only the
    one shared cluster.secret is named as such (it needs `cluster keys`)."""
    path = os.path.join(directory, KEY_FILES[role])
    if not os.path.exists(path) and os.path.exists(os.path.join(directory, LEGACY_SECRET)):
        raise SecretError(migration_message(os.path.abspath(directory)))
    return load_secret(path)


def write_cluster(directory: str, nodes: int, base_port: int, root: str, imports: list[str] | None = None,
                  **options: Any) -> list[str]:
    """Configs for ``nodes`` nodes on 127.0.0.1 ports ``base_port``..; returns their paths.

    A new cluster's nodes get their data directories here, with their configs: a node
    never creates its data as it starts. Where some node already has data (the configs
    of a cluster that ran, written again), none is created: a node whose data is missing
    then is one that lost it, and it is refused at start until it is rebuilt."""
    directory = os.path.abspath(directory)
    if nodes < 1:  # before anything is written: a half-made directory would be started "as it is" next time
        raise ConfigError(f"--nodes must be at least 1, got {nodes}")
    if not 1 <= base_port <= 65536 - nodes:
        raise ConfigError(f"--port: {nodes} nodes need ports {base_port}..{base_port + nodes - 1}, "
                          "all from 1 to 65535")
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)  # it holds the keys
    if os.path.exists(os.path.join(directory, LEGACY_SECRET)):
        raise SecretError(migration_message(directory))
    write_keys(directory)
    ids = [f"n{i}" for i in range(1, nodes + 1)]
    peers = {nid: ("127.0.0.1", base_port + k) for k, nid in enumerate(ids)}
    configs = [NodeConfig(path="", id=nid, listen=peers[nid], data=nid, root=root,
                          peers=peers, imports=list(imports or ()), **options) for nid in ids]
    texts = [render_config(cfg) for cfg in configs]  # every one checked before any file is written
    paths = []
    for nid, text in zip(ids, texts):
        path = os.path.join(directory, f"{nid}.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        paths.append(path)
    data = [os.path.join(directory, nid) for nid in ids]
    if not any(holds_node_data(d) for d in data):
        cluster = new_cluster_id()  # one id for the nodes that found the cluster together
        for nid, d in zip(ids, data):
            create_node_data(d, nid, "new-cluster", cluster=cluster)
    return paths


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port_block(n: int, host: str = "127.0.0.1") -> int:
    """A base port with ``n`` consecutive free ports (best effort: free when asked).

    Taken below (or else above) the range the OS gives outgoing connections their source
    ports from: a port in that range can be taken by any connection, such as the other
    nodes dialling this one, before its node listens on it."""
    low, high = ephemeral_ports()
    spans = [(max(10_000, low - 16_384), low - n), (high + 1, 65_535 - n)]
    spans = [(a, b) for a, b in spans if a <= b]
    for _ in range(100):
        if spans:
            base = random.randint(*random.choice(spans))
        else:  # the OS may use every port: take whatever it gives now
            with socket.socket() as s:
                s.bind((host, 0))
                base = s.getsockname()[1]
        if base + n <= 65_535 and all(_port_free(host, base + k) for k in range(n)):
            return base
    raise ConfigError(f"no block of {n} free ports on {host}")


def next_free_port(port: int, host: str = "127.0.0.1") -> int:
    """``port``, or the first one above it that nothing holds now (a client's outgoing
    connection may sit on the port after the last node's)."""
    for candidate in range(port, 65536):
        if _port_free(host, candidate):
            return candidate
    raise ConfigError(f"no free port on {host} from {port} up")


def start_node(config_path: str, log_path: str | None = None, *, cwd: str | None = None,
               preexec_fn: Any = None) -> subprocess.Popen:
    """``python -m rpc.cli node --config FILE`` in ``cwd``, its output appended to ``log_path``."""
    out = open(log_path, "ab") if log_path else None
    kwargs: dict[str, Any] = {}
    if sys.platform == "win32":  # lets a console Ctrl-Break reach the node, not the parent
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    try:
        return subprocess.Popen([sys.executable, "-m", "rpc.cli", "node", "--config", config_path],
                                stdout=out, stderr=subprocess.STDOUT if out else None, stdin=subprocess.DEVNULL,
                                cwd=cwd, preexec_fn=preexec_fn, **kwargs)
    finally:
        if out is not None:
            out.close()  # the child has its own copy


def stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM, for a foreground command that supervises nodes."""
    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def refuse_if_running(configs: list[NodeConfig], what: str, directory: str) -> None:
    """ConfigError naming the nodes whose data another process holds (a node of the
    same directory already running): starting them again could only fail, over and over."""
    from prevalence._platform import DirectoryLock
    from prevalence.errors import LockedError

    running = []
    for cfg in configs:
        if not os.path.isdir(cfg.data):
            continue
        lock = DirectoryLock(cfg.data)
        try:
            lock.acquire()
        except LockedError:
            running.append(f"{cfg.id} pid {lock.holder() or 'unknown'}")
        else:
            lock.release()
    if running:
        shown = ", ".join(running[:3]) + (f" and {len(running) - 3} more" if len(running) > 3 else "")
        raise ConfigError(f"{os.path.abspath(directory)}: the {what} is already running ({shown}); "
                          "stop it first (Ctrl-C where it was started)")


def node_config_paths(directory: str) -> list[str]:
    """The node configurations in ``directory``: its TOML files with ``id`` and ``listen``
    (an application's own TOML files, such as a layout, may sit next to them), and the
    broken ones that still look like a node's, for load_config to say what is wrong."""
    paths, claimed, broken, named = [], {}, [], set()
    for path in sorted(glob.glob(os.path.join(directory, "*.toml"))):
        try:
            data, _ = read_small_file(path, MAX_CONFIG_BYTES)  # not open(): a FIFO named *.toml would block
            doc = tomllib.loads(data.decode("utf-8"))
        except NotRegularFile:  # no config; a node's name on it: load_config says what it is
            broken.append((path, b""))
            continue
        except OSError:
            paths.append(path)  # load_config will say what is wrong with it
            continue
        except (ValueError, RecursionError):  # not TOML (bad UTF-8 too), or nested too deeply
            broken.append((path, data))
            continue
        if "id" in doc and "listen" in doc:
            paths.append(path)
            peers = doc.get("peers")
            named.update(peers if isinstance(peers, dict) else ())
            # where the others dial it (its own [peers] entry, NodeConfig.address), not its
            # listen: every PC's node may listen on 0.0.0.0:7100
            dialled = peers.get(doc["id"]) if isinstance(peers, dict) and isinstance(doc["id"], str) else None
            for field, value in (("id", doc["id"]), ("address", dialled or doc["listen"])):
                # a copy of a node's file: which one is the node?
                if isinstance(value, str) and (field, value) in claimed:
                    raise ConfigError(f"{os.path.abspath(directory)}: {os.path.basename(claimed[field, value])} and "
                                      f"{os.path.basename(path)} both configure {field} {value!r}: one node per file; "
                                      "move the copy aside")
                claimed[field, value] = path
    for path, data in broken:
        # a node's config saved broken still has its id and listen lines (NULs dropped: a
        # UTF-16 save), or the name of a node the others list; an application's file in the
        # middle of an edit (a layout) has neither
        text = data.replace(b"\0", b"")
        stem = os.path.basename(path)[:-len(".toml")]
        if stem in named or (re.search(rb"^\s*id\s*=", text, re.M) and re.search(rb"^\s*listen\s*=", text, re.M)):
            paths.append(path)
    if not paths:
        raise NoNodeConfig(f"{os.path.abspath(directory)}: no node configuration (*.toml with id and listen) found")
    return sorted(paths)


class NoNodeConfig(ConfigError):
    """A directory with no node configuration in it (a new cluster's, for `cluster up`)."""


def cluster_status(directory: str, timeout: float | None = None) -> list[dict]:
    """Ask every node configured in ``directory`` for its status (unreachable ones too);
    ``timeout``: see :func:`rpc.status_report.ask_status`."""
    configs: list[NodeConfig | tuple[str, ConfigError]] = []
    for path in node_config_paths(directory):
        try:
            cfg = load_config(path)
            tls_contexts(cfg)
            configs.append(cfg)
        except ConfigError as exc:  # the other nodes are still worth seeing: a row that says why not this one
            configs.append((path, exc))
    asked = [c for c in configs if isinstance(c, NodeConfig)]
    replies = iter(ask_status([(c.address, tls_contexts(c)[1]) for c in asked], directory_key(directory, "client"),
                              timeout))
    rows = []
    for c in configs:
        if not isinstance(c, NodeConfig):
            rows.append(status_row(os.path.splitext(os.path.basename(c[0]))[0], None, c[0],
                                   ConfigError(f"not asked: {c[1]}")))
            continue
        reply = next(replies)
        rows.append(status_row(c.id, format_address(c.address), c.path, reply))
        st = reply[1] if isinstance(reply, list) and reply[0] == "ok" else {}
        if type(st.get("cluster")) is str and type(st.get("epoch")) is int:  # whose data it runs on
            rows[-1].update(cluster=one_line(st["cluster"], 64), epoch=st["epoch"])
        if type(st.get("superseded_by")) is int:  # a peer proved a later epoch (rpc.epochs)
            rows[-1]["superseded_by"] = st["superseded_by"]
        learners = st.get("learners")
        if type(learners) is list and all(type(x) is str for x in learners):
            rows[-1]["learners"] = learners[:1000]
    return rows


def cluster_status_full(directory: str, timeout: float | None = None) -> list[dict]:
    """The whole status of every node of ``directory`` that answers (cluster id and epoch
    included, which the status table leaves out)."""
    configs = [load_config(path) for path in node_config_paths(directory)]
    replies = ask_status([(c.address, tls_contexts(c)[1]) for c in configs], directory_key(directory, "client"),
                         timeout)
    return [r[1] for r in replies if not isinstance(r, Exception) and r[0] == "ok"]
