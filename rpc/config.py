"""A node's TOML configuration, checked field by field with messages naming the field.

    id = "n1"
    listen = "127.0.0.1:7101"
    data = "data/n1"                      # relative paths are relative to this file; created
                                          # with the node, never by its start (--init)
    root = "myapp.model:Bank"             # MODULE:FACTORY of the root object
    peer_secret = "peer.secret"           # the key of each role (docs/security.md)
    client_secret = "client.secret"
    admin_secret = "admin.secret"
    fsync = "always"                      # always | unsafe-no-fsync (tests, benchmarks)
    imports = ["myapp.commands"]          # optional: more modules defining transactions
    join = false                          # true for a node added to a running cluster

    [peers]                               # every voter at start, this node included
                                          # (join = true: the members to contact)
    n1 = "127.0.0.1:7101"
    n2 = "127.0.0.1:7102"

    [timeouts]                            # optional
    tick = 0.025                          # seconds per Raft tick
    election_ticks = 10                   # election timeout: 10..20 ticks (0.25..0.5 s)
    heartbeat_ticks = 5                   # a heartbeat every 0.125 s

    [snapshots]                           # optional
    every = 10000                         # entries between automatic snapshots (0: never)
    keep = 2

    [app]                                 # optional: an application hosted in the node
    plugin = "app.node:attach"            # MODULE:FUNCTION called with (process, settings)
    layout = "layout.toml"                # other keys are the plugin's own settings

    [rotation]                            # optional: a key also accepted per role while
    client = "client.secret.new"          # that key is replaced (docs/security.md)

    [tls]                                 # optional: encrypt peer and client traffic
    cert = "n1.crt"                       # this node's certificate and key (PEM)
    key = "n1.key"
    ca = "cluster-ca.crt"                 # what signed every node's certificate
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from prevalence._platform import NotRegularFile, read_small_file
from prevalence.errors import PrevalenceError
from rpc.secret import KEY_FILES, LEGACY_SECRET


class ConfigError(PrevalenceError):
    """The configuration file is missing, malformed, or has a wrong field."""


@dataclass
class NodeConfig:
    path: str
    id: str
    listen: tuple[str, int]
    data: str
    root: str
    peers: dict[str, tuple[str, int]]
    peer_secret: str = KEY_FILES["peer"]  # the key files (relative: to the config file)
    client_secret: str = KEY_FILES["client"]
    admin_secret: str = KEY_FILES["admin"]
    fsync: str = "always"
    imports: list[str] = field(default_factory=list)
    tick: float = 0.025
    election_ticks: int = 10
    heartbeat_ticks: int = 5
    snapshot_every: int = 10_000
    keep_snapshots: int = 2
    join: bool = False  # a node added at run time: its membership comes from the leader
    tls_cert: str | None = None  # PEM certificate and key this node presents
    tls_key: str | None = None
    tls_ca: str | None = None  # PEM bundle that signed the other nodes' certificates
    rotation: dict[str, str] = field(default_factory=dict)  # [rotation]: role -> a key file also accepted
    app: dict[str, Any] = field(default_factory=dict)  # [app]: plugin = MODULE:FUNCTION and its settings

    def __post_init__(self) -> None:
        self.check_fsync()

    @property
    def address(self) -> tuple[str, int]:
        """Where the others dial this node: its [peers] entry (``listen`` may be 0.0.0.0)."""
        return self.peers.get(self.id, self.listen)

    def check_fsync(self) -> None:
        """A node refuses an fsync setting that would ack before the disk (ConfigError)."""
        check_fsync(self.fsync, f"{self.path or 'node ' + repr(self.id)}: field 'fsync'")


# A node's timing, in seconds: a tick shorter than MIN_TICK spins a core (and starves the
# thread that would stop the node), a longer one or an election timeout beyond the limit
# is no failover at all, and an infinite one overflows the clock of the Raft thread.
MIN_TICK, MAX_TICK = 0.001, 10.0
MAX_ELECTION_TIMEOUT = 600.0
MAX_CONFIG_BYTES = 1 << 20  # a node's config is a few hundred bytes; its [peers] a line per node


def _node_id_problem(value: str) -> str | None:
    if value and len(value) <= 64 and value.isprintable():
        return None
    return "must be a short printable name (1-64 characters)"


def _tick_problem(value: float) -> str | None:
    if not MIN_TICK <= value <= MAX_TICK:  # NaN too
        return f"must be from {MIN_TICK:g} to {MAX_TICK:g} seconds"
    return None


def _election_ticks_problem(value: int) -> str | None:
    if not 3 <= value <= 100_000:
        return "must be from 3 to 100000"
    return None


def parse_address(text: Any, where: str) -> tuple[str, int]:
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(f"{where}: expected \"HOST:PORT\", got {text!r}")
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    # ASCII digits only: isdigit() alone passes "²" (which int() refuses) and other scripts' digits
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: expected \"HOST:PORT\" with a port from 1 to 65535, got {text!r}")
    return host, int(port)


def parse_peer_address(text: Any, where: str) -> tuple[str, int]:
    """An address other nodes dial: not the wildcard a node may listen on."""
    host, port = parse_address(text, where)
    if host in ("0.0.0.0", "::", "*"):
        raise ConfigError(f"{where}: {text!r} listens on every interface, but no peer can dial it: give the "
                          "address the other nodes reach this one at")
    return host, port


def check_fsync(mode: Any, where: str) -> str:
    """``mode`` if a node offers it (replication.journal_storage.NODE_FSYNC_MODES); else a
    one-line ConfigError naming the choice."""
    from replication.journal_storage import fsync_mode_problem  # here: clients import this module

    problem = fsync_mode_problem(mode)
    if problem is not None:
        raise ConfigError(f"{where} {problem}")
    return mode


def format_address(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Table:
    def __init__(self, data: dict, path: str, prefix: str = ""):
        self.data, self.path, self.prefix = data, path, prefix
        self.seen: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}: field '{self.prefix}{key}'"

    def get(self, key: str, kind: type | tuple, default: Any = ..., *, check=None, hint: str = "") -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is ...:
                raise ConfigError(f"{self.where(key)} is missing{hint}")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"{self.where(key)} must be {names}, got {value!r}")
        if check is not None:
            problem = check(value)
            if problem:
                raise ConfigError(f"{self.where(key)} {problem}, got {value!r}")
        return value

    def table(self, key: str) -> "_Table":
        value = self.get(key, dict, {})
        return _Table(value, self.path, f"{self.prefix}{key}.")

    def no_extras(self) -> None:
        extra = sorted(set(self.data) - self.seen)
        if extra:
            raise ConfigError(f"{self.path}: unknown field(s) {', '.join(self.prefix + e for e in extra)}")


def load_config(path: str) -> NodeConfig:
    path = os.path.abspath(path)
    try:
        raw, _ = read_small_file(path, MAX_CONFIG_BYTES)  # a FIFO would block, /dev/zero never end
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 10} KiB: not a node configuration")
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except NotRegularFile:
        raise ConfigError(f"{path}: not a regular file (a device, a pipe or a socket), so not a configuration") \
            from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 text: a binary file, or another encoding
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    base = os.path.dirname(path)
    t = _Table(data, path)

    def rel(p: str) -> str:
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))

    positive = lambda v: None if v > 0 else "must be positive"  # noqa: E731
    node_id = t.get("id", str, check=_node_id_problem)
    listen = parse_address(t.get("listen", str), t.where("listen"))
    cfg = NodeConfig(
        path=path,
        id=node_id,
        listen=listen,
        data=rel(t.get("data", str)),
        root=t.get("root", str, check=lambda v: None if ":" in v else "must be MODULE:FACTORY"),
        peers={},
        fsync=check_fsync(t.get("fsync", str, "always"), t.where("fsync")),
        imports=t.get("imports", list, []),
        join=t.get("join", bool, False),
    )
    if "secret_file" in data:
        raise ConfigError(migration_message(path))
    for role in KEY_FILES:
        setattr(cfg, f"{role}_secret", rel(t.get(f"{role}_secret", str)))
    if not all(isinstance(m, str) for m in cfg.imports):
        raise ConfigError(f"{t.where('imports')} must be a list of module names")
    peers = t.table("peers")
    for pid in list(peers.data):
        problem = _node_id_problem(pid)  # a peer is a node: its own configuration names it so
        if problem:
            raise ConfigError(f"{peers.where(pid)}: a node id {problem}, got {pid!r}")
        cfg.peers[pid] = parse_peer_address(peers.get(pid, str), peers.where(pid))
    at: dict[tuple[str, int], str] = {}
    for pid, address in cfg.peers.items():  # one node per address: else a node dials itself as another
        if address in at:
            raise ConfigError(f"{t.where('peers')}: {at[address]!r} and {pid!r} have the same address "
                              f"{format_address(address)}; each node listens on an address of its own")
        at[address] = pid
    if node_id not in cfg.peers:
        raise ConfigError(f"{t.where('peers')} must list this node ({node_id!r}) with its address")
    times = t.table("timeouts")
    cfg.tick = float(times.get("tick", (int, float), cfg.tick, check=_tick_problem))
    cfg.election_ticks = times.get("election_ticks", int, cfg.election_ticks, check=_election_ticks_problem)
    cfg.heartbeat_ticks = times.get("heartbeat_ticks", int, cfg.heartbeat_ticks, check=positive)
    if cfg.heartbeat_ticks >= cfg.election_ticks:
        raise ConfigError(f"{times.where('heartbeat_ticks')} must be smaller than election_ticks")
    if cfg.tick * cfg.election_ticks > MAX_ELECTION_TIMEOUT:
        raise ConfigError(f"{times.where('election_ticks')} times tick must be at most {MAX_ELECTION_TIMEOUT:g} s "
                          f"(an election timeout), got {cfg.election_ticks} x {cfg.tick:g} s")
    times.no_extras()
    snaps = t.table("snapshots")
    cfg.snapshot_every = snaps.get("every", int, cfg.snapshot_every, check=lambda v: None if v >= 0 else "must be >= 0")
    cfg.keep_snapshots = snaps.get("keep", int, cfg.keep_snapshots, check=positive)
    snaps.no_extras()
    rotation = t.table("rotation")
    for role in KEY_FILES:
        if role in rotation.data:
            cfg.rotation[role] = rel(rotation.get(role, str))
    rotation.no_extras()
    tls = t.table("tls")
    if tls.data:
        cfg.tls_cert = rel(tls.get("cert", str))
        cfg.tls_key = rel(tls.get("key", str))
        cfg.tls_ca = rel(tls.get("ca", str))
        for key in ("cert", "key", "ca"):
            if not os.path.isfile(getattr(cfg, "tls_" + key)):
                raise ConfigError(f"{tls.where(key)}: no such file {getattr(cfg, 'tls_' + key)}")
    tls.no_extras()
    app = t.table("app")
    if app.data:
        app.get("plugin", str, check=lambda v: None if ":" in v else "must be MODULE:FUNCTION")
        cfg.app = dict(app.data)  # the plugin checks its own settings (paths relative to this file)
        app.seen.update(app.data)
    t.no_extras()
    return cfg


def check_data_path(cfg: NodeConfig) -> None:
    """ConfigError when the configured data path exists but is not a directory: neither
    "no data" nor "rebuild it" would say what is wrong."""
    if os.path.exists(cfg.data) and not os.path.isdir(cfg.data):
        raise ConfigError(f"{cfg.path}: field 'data': {cfg.data} is not a directory (a file is there): "
                          "check the configuration's data path")


def migration_message(where: str) -> str:
    """Why a configuration or directory with the one shared cluster.secret stops here (one line)."""
    return (f"{where}: uses the one {LEGACY_SECRET} that nodes and clients shared, which let any client act as a "
            f"node; each role now has its own key: peer_secret, client_secret and admin_secret. Stop every node, then "
            f"run `prevalence cluster keys --cluster DIR` on the directory of the configs (or see docs/security.md, "
            f"\"Moving from cluster.secret\")")


def tls_contexts(cfg: NodeConfig):
    """(server, client) SSL contexts of a node configured with [tls], else (None, None).

    TLS encrypts and authenticates the server; the HMAC handshake inside it still
    authenticates both sides with the key of their role.
    """
    if not cfg.tls_cert:
        return None, None
    import ssl

    try:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{cfg.path}: [tls] files cannot be used: {exc}") from None
    return server, client


def check_own_certificate(cfg: NodeConfig, server, client) -> None:
    """ConfigError, naming the reason, when this node's peers would refuse its [tls]
    certificate (expired, not yet valid, not for the address they dial, not signed by
    the CA): checked by a TLS handshake in memory between its own two contexts, as a
    peer would make it, so that the node does not start as a member no peer talks to."""
    import ssl

    from rpc.auth import tls_failure

    host = (cfg.peers.get(cfg.id) or cfg.listen)[0]  # the address its peers dial
    pipes = [ssl.MemoryBIO() for _ in range(4)]
    sides = [server.wrap_bio(pipes[0], pipes[1], server_side=True),
             client.wrap_bio(pipes[2], pipes[3], server_hostname=host)]
    outgoing = [(pipes[1], pipes[2]), (pipes[3], pipes[0])]  # each side's output is the other's input
    try:
        for _ in range(10):
            done = 0
            for side, (out, into) in zip(sides, outgoing):
                try:
                    side.do_handshake()
                    done += 1
                except ssl.SSLWantReadError:
                    pass
                data = out.read()
                if data:
                    into.write(data)
            if done == 2:
                return
    except ssl.SSLError as exc:
        raise ConfigError(f"{cfg.path}: [tls] this node's certificate {cfg.tls_cert} would be refused by its "
                          f"peers (they check it against {cfg.tls_ca} for {host}): {tls_failure(exc)}") from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} to a configuration file")


def render_config(cfg: NodeConfig) -> str:
    """The TOML text of a configuration (what `prevalence cluster up` writes)."""
    q = _toml_value
    cfg.check_fsync()  # again: the field may have changed since the config was built
    lines = [
        f"id = {q(cfg.id)}",
        f"listen = {q(format_address(cfg.listen))}",
        f"data = {q(cfg.data)}",
        f"root = {q(cfg.root)}",
        f"peer_secret = {q(cfg.peer_secret)}",
        f"client_secret = {q(cfg.client_secret)}",
        f"admin_secret = {q(cfg.admin_secret)}",
        f"fsync = {q(cfg.fsync)}",
        f"imports = [{', '.join(q(m) for m in cfg.imports)}]",
        f"join = {'true' if cfg.join else 'false'}",
        "",
        "[peers]",
        *(f"{q(p)} = {q(format_address(a))}" for p, a in cfg.peers.items()),
        "",
        "[timeouts]",
        f"tick = {cfg.tick}",
        f"election_ticks = {cfg.election_ticks}",
        f"heartbeat_ticks = {cfg.heartbeat_ticks}",
        "",
        "[snapshots]",
        f"every = {cfg.snapshot_every}",
        f"keep = {cfg.keep_snapshots}",
        "",
    ]
    if cfg.app:
        lines += ["[app]", *(f"{k} = {_toml_value(v)}" for k, v in cfg.app.items()), ""]
    if cfg.rotation:
        lines += ["[rotation]", *(f"{role} = {q(path)}" for role, path in cfg.rotation.items()), ""]
    if cfg.tls_cert:
        lines += ["[tls]", f"cert = {q(cfg.tls_cert)}", f"key = {q(cfg.tls_key or '')}", f"ca = {q(cfg.tls_ca or '')}", ""]
    return "\n".join(lines)
