"""Topology configuration: a YAML topology file turned into typed, validated, immutable values.

Owns every key a topology may hold, its default, its validation (every problem at once, one line
each naming the file and the key path) and the JSON form in which a config travels.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import reprlib
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from caddy.errors import CaddyError
from caddy.raft.timings import RaftTimings, RaftTimingsError
from caddy.raft.types import Membership
from caddy.sizes import MIN_MESSAGE_BYTES

NodeRole = Literal["voter", "learner", "witness"]
NODE_ROLES: tuple[str, ...] = get_args(NodeRole)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
BALANCER_STRATEGIES = ("round_robin", "least_connections", "weighted", "random", "ip_hash", "p2c")
MAX_PORT = 65535
CLIENT_PORT_OFFSET = 100  # a node's client port defaults to its peer port + this

# Gossip timings per profile. "lan" is memberlist's LAN profile with a 0.8 s probe period instead
# of 1 s: measured on 5 real nodes (bench/gossip.py) that moves the first dead verdict from ~5.9 s
# to ~4.5 s at ~90 B/s of gossip per node, with no false deaths under 2 s pauses. "fast" detects
# failures ~5x sooner at more idle traffic (for loopback clusters and tests); its suspicion
# multiplier of 3 gives ~1 s detection with no false deaths under 0.3 s pauses.
GOSSIP_PROFILES: dict[str, dict[str, int]] = {
    "lan": {
        "probe_interval_ms": 800,
        "probe_timeout_ms": 400,
        "gossip_interval_ms": 200,
        "push_pull_interval_ms": 30_000,
        "suspicion_mult": 4,
    },
    "fast": {
        "probe_interval_ms": 200,
        "probe_timeout_ms": 100,
        "gossip_interval_ms": 50,
        "push_pull_interval_ms": 5_000,
        "suspicion_mult": 3,
    },
}
_LAN = GOSSIP_PROFILES["lan"]


class ConfigError(CaddyError):
    """An invalid topology or config: one line per problem, each `FILE: key.path: message`."""

    def __init__(self, problems: str | tuple[str, ...] | list[str]) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        super().__init__("\n".join(self.problems))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[tuple[str, ...]]]:
        # Keep the problem lines apart when the error crosses a process boundary.
        return (ConfigError, (self.problems,))


def _setting(default: Any, *, minimum: int = 1, choices: tuple[str, ...] = ()) -> Any:
    """A field whose validation differs from the usual (ints >= 1, any string)."""
    return field(default=default, metadata={"minimum": minimum, "choices": choices})


# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One node of the topology; an empty `client_address` means peer port + 100, same host."""

    id: str
    address: str  # "tcp://HOST:PORT": peer endpoint (Raft, gossip, fencing)
    client_address: str = ""  # "tcp://HOST:PORT": client endpoint (KV operations, status, admin)
    role: NodeRole = _setting("voter", choices=NODE_ROLES)
    zone: str | None = None  # free-form placement label, gossiped as metadata, read by the balancer
    weight: int = 1  # balancer weight
    events_address: str = ""  # "tcp://HOST:PORT": a PUB socket with the node's events; "": none

    def __post_init__(self) -> None:
        if self.client_address:
            return
        derived = None if _endpoint_problem(self.address) else _default_client_address(self.address)
        if derived is None:
            raise ConfigError(
                f"<memory>: {self.id}.client_address: cannot derive one from {self.address!r}"
            )
        object.__setattr__(self, "client_address", derived)

    @property
    def host(self) -> str:
        """Host part of the peer address as written (IPv6 keeps its brackets)."""
        return self.address[len("tcp://") :].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        """Port of the peer address."""
        return int(self.address.rsplit(":", 1)[1])


@dataclass(frozen=True, slots=True)
class RaftSettings:
    """Raft timing and batching; timeouts are converted to ticks of `tick_ms` by the core."""

    heartbeat_ms: int = 50
    election_timeout_min_ms: int = 150
    election_timeout_max_ms: int = 300
    max_append_entries: int = 64  # entries per AppendEntries message
    max_append_bytes: int = 1_048_576  # payload bytes per AppendEntries message
    max_inflight: int = 256  # unacknowledged AppendEntries per follower
    snapshot_threshold: int = 10_000  # applied entries since the last snapshot that trigger one
    # ... or applied entry bytes (bounds the log), but at least the last snapshot's size
    snapshot_threshold_bytes: int = 16_777_216
    pre_vote: bool = True  # a partitioned node cannot disrupt the cluster with term bumps
    check_quorum: bool = True  # a leader that cannot hear a majority steps down
    lease_reads: bool = False  # serve reads on a clock lease instead of a ReadIndex round


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """ZeroMQ peer links: timeouts, size limit, queueing, reconnect back-off, liveness."""

    connect_timeout_ms: int = 5000
    request_timeout_ms: int = 30_000
    keep_alive_ms: int = 10_000
    # Frames over this are refused; writes are held to it less framing (`caddy.sizes`).
    max_message_bytes: int = _setting(16 * 1024 * 1024, minimum=MIN_MESSAGE_BYTES)
    send_hwm: int = 10_000  # queued messages per peer before sends are refused
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 2000
    peer_heartbeat_ms: int = 100  # three fit in an election timeout: see caddy.quorum
    peer_silence_ms: int = 1500  # a peer silent this long is treated as disconnected


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One user health check of the `failover.health_checks` list: `{command: CMD}` (passes
    when it exits 0 within the check interval; `{node}` in it is the node id), `{tcp:
    HOST:PORT}` (a connect succeeds) or `{http: URL}` (a 2xx answer)."""

    kind: str  # command | tcp | http
    target: str

    def to_topology(self) -> dict[str, str]:
        return {self.kind: self.target}


HEALTH_CHECK_KINDS = ("command", "tcp", "http")


@dataclass(frozen=True, slots=True)
class FailoverSettings:
    """When a node is declared failed, what the leader then does (`caddy.failover`), the hooks
    it runs, and how long a stopping node drains its clients."""

    enabled: bool = True  # false: health is still checked and reported, nothing acts on it
    failure_threshold: int = 3  # consecutive failed health checks before a node is failed
    health_check_interval_ms: int = 1000
    health_checks: tuple[HealthCheck, ...] = ()
    max_raft_lag_ms: int = 1000  # the node's Raft thread answering slower fails its own check
    max_fsync_ms: int = 1000  # ... and so does one fsync of its log taking longer
    stabilization_ms: int = _setting(10_000, minimum=0)  # failed this long: replaced, removed
    min_quorum: int = 3  # automatic removals never leave fewer voters
    max_lag_entries: int = _setting(
        1000, minimum=0
    )  # a successor or learner this close is caught up
    min_action_interval_ms: int = _setting(5000, minimum=0)  # between two automatic actions
    on_role_change: str = ""  # a command run with each leader.elected / leader.lost event
    on_event: str = ""  # a command run with every failover and cluster event
    hook_timeout_ms: int = 5000
    drain_timeout_ms: int = _setting(30_000, minimum=0)


@dataclass(frozen=True, slots=True)
class ReplicationSettings:
    """Compression and snapshot transfer."""

    compression: bool = True
    compression_threshold_bytes: int = _setting(65_536, minimum=0)
    snapshot_chunk_bytes: int = 1_048_576


@dataclass(frozen=True, slots=True)
class GossipSettings:
    """SWIM with Lifeguard. Plain defaults are the "lan" profile; build others with for_profile."""

    profile: str = _setting("lan", choices=tuple(GOSSIP_PROFILES))
    probe_interval_ms: int = _LAN["probe_interval_ms"]
    probe_timeout_ms: int = _LAN["probe_timeout_ms"]
    indirect_checks: int = _setting(3, minimum=0)  # members asked to probe on our behalf
    suspicion_mult: int = _LAN["suspicion_mult"]
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 4
    gossip_interval_ms: int = _LAN["gossip_interval_ms"]
    gossip_nodes: int = 3
    push_pull_interval_ms: int = _LAN["push_pull_interval_ms"]
    awareness_max_multiplier: int = 8

    @classmethod
    def for_profile(cls, profile: str = "lan", **overrides: Any) -> GossipSettings:
        """The profile's timings, with explicitly given keys taking precedence."""
        if profile not in GOSSIP_PROFILES:
            raise ConfigError(
                f"<memory>: gossip.profile: {_choice_message(GOSSIP_PROFILES, profile)}"
            )
        return cls(profile=profile, **{**GOSSIP_PROFILES[profile], **overrides})


@dataclass(frozen=True, slots=True)
class BalancerSettings:
    """How clients are spread over healthy backends."""

    strategy: str = _setting("round_robin", choices=BALANCER_STRATEGIES)


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """One backend of a service: where it listens, and its share of the traffic."""

    id: str
    address: str  # tcp://HOST:PORT
    weight: int = 1


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    """A service's active checks of its backends: a TCP connect, or an HTTP GET of `http`."""

    interval_ms: int = 1000
    failure_threshold: int = 3  # failed checks in a row before a backend is unhealthy
    http: str = ""  # a path ("/health"): GET it, healthy on 2xx; "": a TCP connect


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """One entry of `services:` (CONTRACT 7); the backends are where the registry starts."""

    name: str
    strategy: str = _setting("round_robin", choices=BALANCER_STRATEGIES)
    listen: tuple[tuple[str, str], ...] = ()  # (node id, tcp://HOST:PORT) of each node's proxy
    health: ServiceHealth = field(default_factory=ServiceHealth)
    backends: tuple[BackendConfig, ...] = ()
    slow_start_ms: int = _setting(10_000, minimum=0)  # a backend that joins or recovers ramps up
    panic_threshold_percent: int = _setting(50, minimum=0)  # fewer eligible: spread over all
    drain_timeout_ms: int = _setting(30_000, minimum=0)  # a drained backend's connections: cut

    def to_topology(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "listen": dict(self.listen),
            "health": asdict(self.health),
            "backends": [asdict(backend) for backend in self.backends],
            "slow_start_ms": self.slow_start_ms,
            "panic_threshold_percent": self.panic_threshold_percent,
            "drain_timeout_ms": self.drain_timeout_ms,
        }


# Keys that were settings once and are now ignored (with a logged warning), so that older topology
# files keep loading: why each one went.
_REMOVED_KEYS: dict[str, dict[str, str]] = {
    "transport": {"tcp_nodelay": "ZeroMQ sets TCP_NODELAY on every TCP connection it makes"},
    "replication": {
        "batch_entries": "writes waiting together share one append, cut into entries by size",
        "batch_delay_ms": "writes are proposed as soon as the Raft actor's mailbox is empty",
    },
}

_SECTIONS: dict[str, type] = {
    "raft": RaftSettings,
    "transport": TransportSettings,
    "failover": FailoverSettings,
    "replication": ReplicationSettings,
    "gossip": GossipSettings,
    "balancer": BalancerSettings,
}


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A whole validated topology; `warnings` holds lines that are advice, not errors."""

    cluster: str
    nodes: tuple[NodeConfig, ...]
    data_dir: Path
    tick_ms: int = 10
    # The node's logging level unless `caddy-node --log-level` says otherwise; live on reload.
    log_level: str = _setting("INFO", choices=LOG_LEVELS)
    raft: RaftSettings = field(default_factory=RaftSettings)
    transport: TransportSettings = field(default_factory=TransportSettings)
    failover: FailoverSettings = field(default_factory=FailoverSettings)
    replication: ReplicationSettings = field(default_factory=ReplicationSettings)
    gossip: GossipSettings = field(default_factory=GossipSettings)
    balancer: BalancerSettings = field(default_factory=BalancerSettings)
    services: tuple[ServiceConfig, ...] = ()
    source: str = "<memory>"
    warnings: tuple[str, ...] = ()

    def node(self, node_id: str) -> NodeConfig:
        """The node with this id; a ConfigError naming the known ids when there is none."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        known = ", ".join(node.id for node in self.nodes)
        raise ConfigError(f"{self.source}: nodes: no node with id {node_id!r} (ids: {known})")

    def peers_of(self, node_id: str) -> tuple[NodeConfig, ...]:
        """Every other node, in topology order."""
        self.node(node_id)
        return tuple(node for node in self.nodes if node.id != node_id)

    def node_data_dir(self, node_id: str) -> Path:
        """Where this node keeps all of its durable state."""
        return self.data_dir / self.node(node_id).id

    @property
    def voters(self) -> tuple[str, ...]:
        return self._ids_with_role("voter")

    @property
    def learners(self) -> tuple[str, ...]:
        return self._ids_with_role("learner")

    @property
    def witnesses(self) -> tuple[str, ...]:
        return self._ids_with_role("witness")

    @property
    def membership(self) -> Membership:
        """The initial Raft membership this topology describes."""
        return Membership(
            frozenset(self.voters), frozenset(self.learners), frozenset(self.witnesses)
        )

    def _ids_with_role(self, role: str) -> tuple[str, ...]:
        return tuple(node.id for node in self.nodes if node.role == role)

    def to_dict(self) -> dict[str, Any]:
        """Every key explicit, in topology form: `parse_topology(c.to_dict(), c.source) == c`."""
        return {
            "cluster": self.cluster,
            "data_dir": str(self.data_dir),
            "tick_ms": self.tick_ms,
            "log_level": self.log_level,
            "nodes": [asdict(node) for node in self.nodes],
            **{name: _section_dict(getattr(self, name)) for name in _SECTIONS},
            "services": {service.name: service.to_topology() for service in self.services},
        }

    def to_json(self) -> str:
        """The topology form plus `source` and `warnings`, for another process to rebuild."""
        document = {**self.to_dict(), "source": self.source, "warnings": list(self.warnings)}
        return json.dumps(document, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> ClusterConfig:
        """Rebuild (and re-validate) a config from `to_json` output."""
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as error:
            raise ConfigError(f"<json>: not valid JSON: {error}") from None
        if not isinstance(document, dict):
            raise ConfigError(f"<json>: top level: must be an object, got {_show(document)}")
        source = document.pop("source", "<json>")
        document.pop("warnings", None)  # derived from the rest, recomputed below
        if not isinstance(source, str):
            raise ConfigError(f"<json>: source: must be a string, got {_show(source)}")
        return parse_topology(document, source)


def _section_dict(section: Any) -> dict[str, Any]:
    """A settings section in topology form (health checks as `{kind: target}` mappings)."""
    document = asdict(section)
    if isinstance(section, FailoverSettings):
        document["health_checks"] = [check.to_topology() for check in section.health_checks]
    return document


# ---------------------------------------------------------------------------------------------
# Loading and validation


_TOP_KEYS = ("cluster", "data_dir", "tick_ms", "log_level", "nodes", *_SECTIONS, "services")
_SERVICE_KEYS = tuple(spec.name for spec in fields(ServiceConfig) if spec.name != "name")
_NODE_KEYS = tuple(spec.name for spec in fields(NodeConfig))
_FIELDS: dict[tuple[type, str], Field[Any]] = {
    (cls, spec.name): spec
    for cls in (NodeConfig, ClusterConfig, ServiceConfig, ServiceHealth, BackendConfig)
    + tuple(_SECTIONS.values())
    for spec in fields(cls)
}
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ENDPOINT = re.compile(r"tcp://(\[[^\]]*\]|[^:/\[\]\s]+):([0-9]{1,9})")
_HOST_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(\.{_HOST_LABEL})*")
_NUMERIC_HOST = re.compile(r"[0-9.]+")

# Ordering rules between settings: (left key, relation, right key); the left key is blamed.
_ORDERINGS: tuple[tuple[str, str, str], ...] = (
    ("tick_ms", "<=", "raft.heartbeat_ms"),
    ("raft.election_timeout_min_ms", ">", "raft.heartbeat_ms"),
    ("raft.election_timeout_max_ms", ">=", "raft.election_timeout_min_ms"),
    ("raft.max_append_bytes", "<", "transport.max_message_bytes"),
    ("transport.reconnect_ivl_max_ms", ">=", "transport.reconnect_ivl_ms"),
    ("transport.peer_silence_ms", ">", "transport.peer_heartbeat_ms"),
    ("replication.snapshot_chunk_bytes", "<", "transport.max_message_bytes"),
    ("gossip.probe_timeout_ms", "<", "gossip.probe_interval_ms"),
)
_RELATIONS = {
    "<": (int.__lt__, "less than"),
    "<=": (int.__le__, "at most"),
    ">": (int.__gt__, "greater than"),
    ">=": (int.__ge__, "at least"),
}

_shower = reprlib.Repr()
_shower.maxstring = _shower.maxother = 60
_shower.maxlevel = 2


def _show(value: object) -> str:
    """A short repr, safe on huge or self-referencing values from YAML aliases."""
    return _shower.repr(value)


def _choice_message(choices: Any, value: object) -> str:
    return f"must be one of {', '.join(choices)}, got {_show(value)}"


def _split_unchecked(address: str) -> tuple[str, int]:
    host, port = address[len("tcp://") :].rsplit(":", 1)
    return host, int(port)


def _endpoint_problem(address: object) -> str | None:
    """Why `address` is not a usable `tcp://HOST:PORT` endpoint, or None when it is."""
    match = _ENDPOINT.fullmatch(address) if isinstance(address, str) else None
    if match is None:
        return f"must be tcp://HOST:PORT, got {_show(address)}"
    host, port = match.group(1), int(match.group(2))
    if not 1 <= port <= MAX_PORT:
        return f"port must be 1..{MAX_PORT}, got {port}"
    try:
        if host.startswith("["):
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(host[1:-1])
        elif _NUMERIC_HOST.fullmatch(host):
            ip = ipaddress.IPv4Address(host)
        elif _HOSTNAME.fullmatch(host):
            return None
        else:
            return f"host {host!r} is not a host name or IP address"
    except ValueError:
        return f"host {host!r} is not a valid IP address"
    if ip.is_unspecified:
        return f"host {host} is a wildcard that peers cannot connect to; use the node's own address"
    return None


def _default_client_address(address: str) -> str | None:
    host, port = _split_unchecked(address)
    port += CLIENT_PORT_OFFSET
    return f"tcp://{host}:{port}" if port <= MAX_PORT else None


class _Problems:
    """Collects problem lines so that validation reports all of them at once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []
        self.bad_keys: set[str] = set()  # keys already blamed, left out of cross-key rules

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{self.source}: {path}: {message}")
        self.bad_keys.add(path)


def _join(prefix: str, key: object) -> str:
    shown = key if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else _show(key)
    return f"{prefix}.{shown}" if prefix else str(shown)


def _reject_unknown_keys(
    problems: _Problems, mapping: dict[Any, Any], known: tuple[str, ...], prefix: str
) -> None:
    for key in mapping:
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1) if isinstance(key, str) else []
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        problems.add(_join(prefix, key), f"unknown key; {hint}")


def _check_setting(problems: _Problems, path: str, value: object, spec: Field[Any]) -> bool:
    """Type and range of one value against its field's default and metadata."""
    default = spec.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            problems.add(path, f"must be true or false, got {_show(value)}")
            return False
    elif isinstance(default, int):
        minimum = spec.metadata.get("minimum", 1)
        if type(value) is not int:
            problems.add(path, f"must be an integer, got {_show(value)}")
            return False
        if value < minimum:
            expected = "a positive integer" if minimum == 1 else f"at least {minimum}"
            problems.add(path, f"must be {expected}, got {value}")
            return False
    elif spec.metadata.get("choices"):
        if not isinstance(value, str) or value not in spec.metadata["choices"]:
            problems.add(path, _choice_message(spec.metadata["choices"], value))
            return False
    elif isinstance(default, str) and not isinstance(value, str):
        problems.add(path, f"must be a string, got {_show(value)}")
        return False
    return True


_HOST_PORT = re.compile(r"(\[[^\]]*\]|[^:/\[\]\s]+):([0-9]{1,5})")


def _parse_health_checks(problems: _Problems, path: str, raw: object) -> tuple[HealthCheck, ...]:
    """`[{command: ...} | {tcp: HOST:PORT} | {http: URL}, ...]`; bad entries are reported."""
    if not isinstance(raw, list):
        problems.add(path, f"must be a list of checks, got {_show(raw)}")
        return ()
    checks: list[HealthCheck] = []
    for index, entry in enumerate(raw):
        where = f"{path}[{index}]"
        if not isinstance(entry, dict) or len(entry) != 1:
            problems.add(
                where,
                f"must be one of {{command: CMD}}, {{tcp: HOST:PORT}}, "
                f"{{http: URL}}, got {_show(entry)}",
            )
            continue
        ((kind, target),) = entry.items()
        if kind not in HEALTH_CHECK_KINDS:
            problems.add(_join(where, kind), _choice_message(HEALTH_CHECK_KINDS, kind))
        elif not isinstance(target, str) or not target.strip():
            problems.add(_join(where, kind), f"must be a non-empty string, got {_show(target)}")
        elif kind == "tcp" and not _HOST_PORT.fullmatch(target):
            problems.add(_join(where, kind), f"must be HOST:PORT, got {_show(target)}")
        elif kind == "http" and not target.startswith(("http://", "https://")):
            problems.add(
                _join(where, kind), f"must be an http:// or https:// URL, got {_show(target)}"
            )
        else:
            checks.append(HealthCheck(kind, target))
    return tuple(checks)


def _check_identifier(problems: _Problems, path: str, value: object) -> bool:
    if isinstance(value, str) and _IDENTIFIER.fullmatch(value):
        return True
    problems.add(
        path,
        "must be letters, digits, '-', '_' or '.', starting with a letter or digit, "
        f"got {_show(value)}",
    )
    return False


def _parse_section(problems: _Problems, name: str, raw: object) -> Any:
    """One optional settings mapping; a missing or empty section means all defaults."""
    cls = _SECTIONS[name]
    given: dict[str, Any] = {}
    if isinstance(raw, dict):
        known = tuple(spec.name for spec in fields(cls))
        removed = _REMOVED_KEYS.get(name, {})
        for key in raw:
            if key in removed:
                _warn_removed(
                    f"{problems.source}: {name}.{key}: ignored: no longer a setting; {removed[key]}"
                )
        kept = {key: value for key, value in raw.items() if key not in removed}
        _reject_unknown_keys(problems, kept, known, name)
        for key in known:
            if key not in raw:
                continue
            if isinstance(_FIELDS[cls, key].default, tuple):
                given[key] = _parse_health_checks(problems, f"{name}.{key}", raw[key])
            elif _check_setting(problems, f"{name}.{key}", raw[key], _FIELDS[cls, key]):
                given[key] = raw[key]
    elif raw is not None:
        problems.add(name, f"must be a mapping of settings, got {_show(raw)}")
    return GossipSettings.for_profile(**given) if cls is GossipSettings else cls(**given)


def _parse_services(
    problems: _Problems, raw: object, node_ids: set[str], default_strategy: str
) -> tuple[ServiceConfig, ...]:
    """`services: {NAME: {strategy, listen, health, backends, ...}}`; bad entries reported."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        problems.add("services", f"must be a mapping of service names, got {_show(raw)}")
        return ()
    services = []
    for name, entry in raw.items():
        path = _join("services", name)
        if not _check_identifier(problems, path, name):
            continue
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            problems.add(path, f"must be a mapping, got {_show(entry)}")
            continue
        _reject_unknown_keys(problems, entry, _SERVICE_KEYS, path)
        given: dict[str, Any] = {"strategy": default_strategy}
        for key in ("strategy", "slow_start_ms", "panic_threshold_percent", "drain_timeout_ms"):
            if key in entry and _check_setting(
                problems, f"{path}.{key}", entry[key], _FIELDS[ServiceConfig, key]
            ):
                given[key] = entry[key]
        given["listen"] = _parse_listen(problems, f"{path}.listen", entry.get("listen"), node_ids)
        given["health"] = _parse_service_health(problems, f"{path}.health", entry.get("health"))
        given["backends"] = _parse_backends(problems, f"{path}.backends", entry.get("backends"))
        services.append(ServiceConfig(name=name, **given))
    return tuple(services)


def _parse_listen(
    problems: _Problems, path: str, raw: object, node_ids: set[str]
) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        problems.add(path, f"must be a mapping of node ids to tcp://HOST:PORT, got {_show(raw)}")
        return ()
    listen = []
    for node, address in raw.items():
        where = _join(path, node)
        if node not in node_ids:
            problems.add(where, f"no node {_show(node)} in nodes")
        elif problem := _endpoint_problem(address):
            problems.add(where, problem)
        else:
            listen.append((node, address))
    return tuple(sorted(listen))


def _parse_service_health(problems: _Problems, path: str, raw: object) -> ServiceHealth:
    if raw is None:
        return ServiceHealth()
    if not isinstance(raw, dict):
        problems.add(path, f"must be a mapping, got {_show(raw)}")
        return ServiceHealth()
    known = tuple(spec.name for spec in fields(ServiceHealth))
    _reject_unknown_keys(problems, raw, known, path)
    given = {
        key: raw[key]
        for key in known
        if key in raw
        and _check_setting(problems, f"{path}.{key}", raw[key], _FIELDS[ServiceHealth, key])
    }
    http = given.get("http", "")
    if http and not http.startswith("/"):
        problems.add(f"{path}.http", f"must be a path starting with '/', got {_show(http)}")
        given.pop("http")
    return ServiceHealth(**given)


def _parse_backends(problems: _Problems, path: str, raw: object) -> tuple[BackendConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.add(path, f"must be a list of backends, got {_show(raw)}")
        return ()
    backends: list[BackendConfig] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw):
        where = f"{path}[{index}]"
        if not isinstance(entry, dict):
            problems.add(where, f"must be a mapping with id and address, got {_show(entry)}")
            continue
        _reject_unknown_keys(problems, entry, ("id", "address", "weight"), where)
        ok = True
        for key in ("id", "address"):
            if key not in entry:
                problems.add(f"{where}.{key}", "missing (required)")
                ok = False
        if "id" in entry:
            if not _check_identifier(problems, f"{where}.id", entry["id"]):
                ok = False
            elif entry["id"] in seen:
                problems.add(f"{where}.id", f"{entry['id']!r} is listed twice")
                ok = False
        if "address" in entry and (problem := _endpoint_problem(entry["address"])):
            problems.add(f"{where}.address", problem)
            ok = False
        weight = entry.get("weight", 1)
        if not _check_setting(
            problems, f"{where}.weight", weight, _FIELDS[BackendConfig, "weight"]
        ):
            ok = False
        if ok:
            seen.add(entry["id"])
            backends.append(BackendConfig(entry["id"], entry["address"], weight))
    return tuple(backends)


def _warn_removed(line: str) -> None:
    # Imported here: logging pulls in threading, and a topology without removed keys (the usual
    # case) keeps this module free of it.
    import logging

    logging.getLogger(__name__).warning("%s", line)


def _parse_node(problems: _Problems, raw: object, path: str) -> dict[str, Any]:
    """The node's valid values; a value that is missing from the result was reported."""
    if not isinstance(raw, dict):
        problems.add(path, f"must be a mapping with at least id and address, got {_show(raw)}")
        return {}
    _reject_unknown_keys(problems, raw, _NODE_KEYS, path)
    node: dict[str, Any] = {}
    for key in ("id", "address"):
        if key not in raw:
            problems.add(f"{path}.{key}", "missing (required)")
    if "id" in raw and _check_identifier(problems, f"{path}.id", raw["id"]):
        node["id"] = raw["id"]
    for key in ("address", "client_address", "events_address"):
        if key == "events_address" and raw.get(key) == "":
            continue  # the round-trip form of "no event socket"
        if key in raw:
            problem = _endpoint_problem(raw[key])
            if problem:
                problems.add(f"{path}.{key}", problem)
            else:
                node[key] = raw[key]
    if "address" in node and "client_address" not in raw:
        default = _default_client_address(node["address"])
        if default is None:
            problems.add(
                f"{path}.client_address",
                f"not given, and the default (peer port {_split_unchecked(node['address'])[1]} "
                f"+ {CLIENT_PORT_OFFSET}) exceeds {MAX_PORT}; give it explicitly",
            )
        else:
            node["client_address"] = default
    for key in ("role", "weight"):
        value = raw.get(key, _FIELDS[NodeConfig, key].default)
        if _check_setting(problems, f"{path}.{key}", value, _FIELDS[NodeConfig, key]):
            node[key] = value
    zone = raw.get("zone")
    if zone is None or (isinstance(zone, str) and zone):
        node["zone"] = zone
    else:
        problems.add(f"{path}.zone", f"must be a non-empty string, got {_show(zone)}")
    return node


def _check_nodes_together(problems: _Problems, nodes: list[dict[str, Any]]) -> None:
    """Rules across nodes: unique ids, unique endpoints, someone able to lead."""
    first_id: dict[str, int] = {}
    endpoint_owner: dict[tuple[str, int], str] = {}
    for index, node in enumerate(nodes):
        if "id" in node:
            if node["id"] in first_id:
                problems.add(
                    f"nodes[{index}].id",
                    f"duplicate id {node['id']!r} (also nodes[{first_id[node['id']]}].id)",
                )
            first_id.setdefault(node["id"], index)
        for key in ("address", "client_address", "events_address"):
            if not node.get(key):
                continue
            host, port = _split_unchecked(node[key])
            endpoint = (host.lower(), port)
            path = f"nodes[{index}].{key}"
            if endpoint in endpoint_owner:
                problems.add(path, f"{node[key]!r} is already used by {endpoint_owner[endpoint]}")
                if node.get("client_address") == _default_client_address(node[key]):
                    break  # the default client address repeats the clash: say it once
            endpoint_owner.setdefault(endpoint, path)
    roles = [node.get("role") for node in nodes]
    if nodes and None not in roles and "voter" not in roles:
        problems.add(
            "nodes",
            "no voter: at least one node needs role voter (witnesses and learners never lead)",
        )


def _check_settings_together(problems: _Problems, values: dict[str, Any]) -> None:
    already_bad = set(problems.bad_keys)  # a failed rule does not hide the next one
    for left, relation, right in _ORDERINGS:
        if left in already_bad or right in already_bad:
            continue
        holds, words = _RELATIONS[relation]
        if not holds(values[left], values[right]):
            problems.add(left, f"must be {words} {right} ({values[right]}), got {values[left]}")
    if values["raft.lease_reads"] and not values["raft.check_quorum"]:
        # Without CheckQuorum a deposed leader may still believe its lease and serve stale reads.
        problems.add("raft.lease_reads", "needs raft.check_quorum: true")


def _check_raft_ticks(problems: _Problems, raft: RaftSettings, tick_ms: int) -> None:
    """Durations in order in milliseconds can still meet once rounded up to whole ticks."""
    timing_keys = {
        "tick_ms",
        "raft.heartbeat_ms",
        "raft.election_timeout_min_ms",
        "raft.election_timeout_max_ms",
    }
    if timing_keys & problems.bad_keys:
        return  # already reported
    try:
        RaftTimings.from_settings(raft, tick_ms)
    except RaftTimingsError as error:
        problems.add("raft.election_timeout_min_ms", str(error))


def _resolve_data_dir(value: str, base_dir: Path | None) -> Path:
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = (base_dir if base_dir is not None else Path.cwd()).absolute() / path
    return Path(os.path.normpath(path))


def parse_topology(
    data: object, source: str = "<memory>", base_dir: Path | None = None
) -> ClusterConfig:
    """Validate a loaded topology mapping; ConfigError lists every problem found.

    A relative `data_dir` resolves against `base_dir` (the topology file's folder), or the
    current directory when there is none.
    """
    problems = _Problems(source)
    if not isinstance(data, dict):
        got = "nothing (empty document)" if data is None else _show(data)
        problems.add("top level", f"must be a mapping with at least cluster and nodes, got {got}")
        raise ConfigError(problems.lines)
    _reject_unknown_keys(problems, data, _TOP_KEYS, "")

    if "cluster" not in data:
        problems.add("cluster", "missing (required)")
    else:
        _check_identifier(problems, "cluster", data["cluster"])
    data_dir = data.get("data_dir", "./data")
    if not isinstance(data_dir, str) or not data_dir or "\0" in data_dir:
        problems.add("data_dir", f"must be a non-empty path string, got {_show(data_dir)}")
    tick_ms = data.get("tick_ms", _FIELDS[ClusterConfig, "tick_ms"].default)
    _check_setting(problems, "tick_ms", tick_ms, _FIELDS[ClusterConfig, "tick_ms"])
    log_level = data.get("log_level", _FIELDS[ClusterConfig, "log_level"].default)
    _check_setting(problems, "log_level", log_level, _FIELDS[ClusterConfig, "log_level"])

    raw_nodes = data.get("nodes")
    nodes: list[dict[str, Any]] = []
    if "nodes" not in data:
        problems.add("nodes", "missing (required)")
    elif not isinstance(raw_nodes, list) or not raw_nodes:
        problems.add("nodes", f"must be a non-empty list of nodes, got {_show(raw_nodes)}")
    else:
        nodes = [_parse_node(problems, raw, f"nodes[{i}]") for i, raw in enumerate(raw_nodes)]
        _check_nodes_together(problems, nodes)

    sections = {name: _parse_section(problems, name, data.get(name)) for name in _SECTIONS}
    values = {
        f"{name}.{key}": value
        for name, section in sections.items()
        for key, value in asdict(section).items()
    }
    _check_settings_together(problems, {**values, "tick_ms": tick_ms})
    _check_raft_ticks(problems, sections["raft"], tick_ms)
    node_ids = {node["id"] for node in nodes if "id" in node}
    default_strategy = sections["balancer"].strategy
    services = _parse_services(problems, data.get("services"), node_ids, default_strategy)
    if problems.lines:
        raise ConfigError(problems.lines)

    voting = sum(node["role"] != "learner" for node in nodes)
    warnings = (
        (
            f"{source}: nodes: an even number of voters ({voting}) tolerates no more failures "
            f"than {voting - 1}",
        )
        if voting % 2 == 0
        else ()
    )
    return ClusterConfig(
        cluster=data["cluster"],
        nodes=tuple(NodeConfig(**node) for node in nodes),
        data_dir=_resolve_data_dir(data_dir, base_dir),
        tick_ms=tick_ms,
        log_level=log_level,
        services=services,
        source=source,
        warnings=warnings,
        **sections,
    )


class _TopologyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing duplicate keys (plain YAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"duplicate key {key_node.value!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_topology(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and validate a topology file; ConfigError (never a traceback) on any problem."""
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{source}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{source}: not UTF-8 text (byte {error.start})") from None
    try:
        data = yaml.load(text, Loader=_TopologyLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{source}: {where}not valid YAML: {error.problem or error}") from None
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from None
    return parse_topology(data, source, Path(path).absolute().parent)
