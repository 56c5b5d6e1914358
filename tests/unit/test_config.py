"""Topology configuration: defaults, validation lines, warnings, JSON form, shipped topologies."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caddy.config import (
    GOSSIP_PROFILES,
    BalancerSettings,
    ClusterConfig,
    ConfigError,
    FailoverSettings,
    GossipSettings,
    NodeConfig,
    RaftSettings,
    ReplicationSettings,
    TransportSettings,
    load_topology,
    parse_topology,
)
from caddy.errors import CaddyError
from caddy.raft.types import Membership

REPO = Path(__file__).resolve().parents[2]
SETTINGS = (
    RaftSettings,
    TransportSettings,
    FailoverSettings,
    ReplicationSettings,
    GossipSettings,
    BalancerSettings,
)
SOURCE = "topology.yaml"


def base_topology() -> dict[str, Any]:
    return {
        "cluster": "demo",
        "nodes": [
            {"id": "n1", "address": "tcp://127.0.0.1:7101"},
            {"id": "n2", "address": "tcp://127.0.0.1:7102"},
            {"id": "n3", "address": "tcp://127.0.0.1:7103"},
        ],
    }


def problems_of(data: object) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_topology(data, SOURCE)
    return caught.value.problems


DROP = object()
NAME_RULE = "must be letters, digits, '-', '_' or '.', starting with a letter or digit"


def changed(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """The base topology with the value at `path` set (or removed when value is DROP)."""
    data = base_topology()
    *parents, last = path
    target: Any = data
    for key in parents:
        target = target.setdefault(key, {}) if isinstance(target, dict) else target[key]
    if value is DROP:
        del target[last]
    else:
        target[last] = value
    return data


# --- defaults ---------------------------------------------------------------------------------


def test_settings_defaults_are_the_documented_values() -> None:
    assert RaftSettings() == RaftSettings(
        heartbeat_ms=50,
        election_timeout_min_ms=150,
        election_timeout_max_ms=300,
        max_append_entries=64,
        max_append_bytes=1_048_576,
        max_inflight=256,
        snapshot_threshold=10_000,
        snapshot_threshold_bytes=16_777_216,
        pre_vote=True,
        check_quorum=True,
        lease_reads=False,
    )
    assert TransportSettings() == TransportSettings(
        connect_timeout_ms=5000,
        request_timeout_ms=30000,
        keep_alive_ms=10000,
        max_message_bytes=16 * 1024 * 1024,
        send_hwm=10000,
        reconnect_ivl_ms=100,
        reconnect_ivl_max_ms=2000,
        peer_heartbeat_ms=100,
        peer_silence_ms=1500,
    )
    assert FailoverSettings() == FailoverSettings(
        enabled=True, failure_threshold=3, health_check_interval_ms=1000, drain_timeout_ms=30000
    )
    assert ReplicationSettings() == ReplicationSettings(
        compression=True,
        compression_threshold_bytes=65_536,
        snapshot_chunk_bytes=1_048_576,
    )
    assert GossipSettings() == GossipSettings(
        profile="lan",
        probe_interval_ms=800,
        probe_timeout_ms=400,
        indirect_checks=3,
        suspicion_mult=4,
        suspicion_max_timeout_mult=6,
        retransmit_mult=4,
        gossip_interval_ms=200,
        gossip_nodes=3,
        push_pull_interval_ms=30000,
        awareness_max_multiplier=8,
    )
    assert BalancerSettings().strategy == "round_robin"


def test_minimal_topology_takes_every_default(tmp_path: Path) -> None:
    config = parse_topology(base_topology(), SOURCE, tmp_path)
    assert config.cluster == "demo"
    assert config.tick_ms == 10
    assert config.data_dir == tmp_path / "data"
    assert config.source == SOURCE
    assert config.warnings == ()
    assert (config.raft, config.transport, config.failover) == (
        RaftSettings(),
        TransportSettings(),
        FailoverSettings(),
    )
    assert (config.replication, config.gossip, config.balancer) == (
        ReplicationSettings(),
        GossipSettings(),
        BalancerSettings(),
    )
    assert [(n.role, n.zone, n.weight) for n in config.nodes] == [("voter", None, 1)] * 3


def test_client_address_defaults_to_peer_port_plus_100() -> None:
    data = base_topology()
    data["nodes"][1]["client_address"] = "tcp://127.0.0.1:9000"
    config = parse_topology(data)
    assert [n.client_address for n in config.nodes] == [
        "tcp://127.0.0.1:7201",
        "tcp://127.0.0.1:9000",
        "tcp://127.0.0.1:7203",
    ]
    assert NodeConfig("x", "tcp://[::1]:65435").client_address == "tcp://[::1]:65535"


def test_node_host_and_port() -> None:
    node = NodeConfig("n1", "tcp://10.0.0.7:7101")
    assert (node.host, node.port) == ("10.0.0.7", 7101)
    ipv6 = NodeConfig("n2", "tcp://[::1]:7102")
    assert (ipv6.host, ipv6.port) == ("[::1]", 7102)


def test_relative_data_dir_resolves_against_the_topology_folder(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "t.yaml"
    path.write_text(
        "cluster: c\ndata_dir: ../state/./c\nnodes:\n  - {id: a, address: 'tcp://127.0.0.1:1'}\n"
    )
    config = load_topology(path)
    assert config.data_dir == tmp_path / "state" / "c"
    assert config.node_data_dir("a") == tmp_path / "state" / "c" / "a"


def test_absolute_data_dir_is_kept_and_relative_without_base_uses_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parse_topology({**base_topology(), "data_dir": "/srv/caddy"}).data_dir == Path(
        "/srv/caddy"
    )
    monkeypatch.chdir(tmp_path)
    assert parse_topology(base_topology()).data_dir == tmp_path / "data"


def test_gossip_profile_sets_timings_and_explicit_keys_win() -> None:
    fast = parse_topology({**base_topology(), "gossip": {"profile": "fast"}}).gossip
    assert fast == GossipSettings.for_profile("fast")
    for key, value in GOSSIP_PROFILES["fast"].items():
        assert getattr(fast, key) == value
    assert (fast.probe_interval_ms, fast.probe_timeout_ms) == (200, 100)
    tuned = parse_topology(
        {**base_topology(), "gossip": {"profile": "fast", "probe_interval_ms": 300}}
    ).gossip
    assert (tuned.probe_interval_ms, tuned.gossip_interval_ms) == (300, 50)


def test_explicit_settings_and_node_metadata_are_read() -> None:
    data = base_topology()
    data["nodes"][2].update(role="learner", zone="rack-b", weight=5)
    data.update(tick_ms=5, raft={"heartbeat_ms": 20, "lease_reads": True}, balancer=None)
    config = parse_topology(data)
    assert (config.tick_ms, config.raft.heartbeat_ms, config.raft.lease_reads) == (5, 20, True)
    assert config.balancer == BalancerSettings()
    assert config.node("n3") == NodeConfig(
        "n3", "tcp://127.0.0.1:7103", "tcp://127.0.0.1:7203", "learner", "rack-b", 5
    )


# --- accessors --------------------------------------------------------------------------------


def test_roles_peers_and_lookup() -> None:
    data = base_topology()
    data["nodes"][1]["role"] = "learner"
    data["nodes"].append({"id": "w", "address": "tcp://127.0.0.1:7104", "role": "witness"})
    config = parse_topology(data, SOURCE, Path("/d"))
    assert (config.voters, config.learners, config.witnesses) == (("n1", "n3"), ("n2",), ("w",))
    assert config.membership == Membership(
        frozenset({"n1", "n3"}), frozenset({"n2"}), frozenset({"w"})
    )
    assert [peer.id for peer in config.peers_of("n2")] == ["n1", "n3", "w"]
    assert config.node_data_dir("w") == Path("/d/data/w")
    with pytest.raises(ConfigError) as caught:
        config.peers_of("n9")
    assert caught.value.problems == (f"{SOURCE}: nodes: no node with id 'n9' (ids: n1, n2, n3, w)",)


def test_config_error_is_a_caddy_error_and_keeps_its_lines() -> None:
    error = ConfigError(["f: a: one", "f: b: two"])
    assert isinstance(error, CaddyError)
    assert str(error) == "f: a: one\nf: b: two"
    assert pickle.loads(pickle.dumps(error)).problems == error.problems
    assert ConfigError("f: a: single").problems == ("f: a: single",)


# --- validation -------------------------------------------------------------------------------

INVALID = [
    pytest.param(
        ("nodes", 2, "role"),
        "leader",
        "nodes[2].role: must be one of voter, learner, witness, got 'leader'",
        id="bad-role",
    ),
    pytest.param(("cluster",), DROP, "cluster: missing (required)", id="no-cluster"),
    pytest.param(("nodes",), DROP, "nodes: missing (required)", id="no-nodes"),
    pytest.param(("nodes",), [], "nodes: must be a non-empty list of nodes, got []", id="empty"),
    pytest.param(
        ("nodes",),
        {"n1": 1},
        "nodes: must be a non-empty list of nodes, got {'n1': 1}",
        id="nodes-mapping",
    ),
    pytest.param(
        ("nodes", 1),
        "n2",
        "nodes[1]: must be a mapping with at least id and address, got 'n2'",
        id="node-scalar",
    ),
    pytest.param(("nodes", 0, "id"), DROP, "nodes[0].id: missing (required)", id="no-id"),
    pytest.param(
        ("nodes", 0, "address"), DROP, "nodes[0].address: missing (required)", id="no-address"
    ),
    pytest.param(("tick",), 5, "tick: unknown key; did you mean 'tick_ms'?", id="unknown-top"),
    pytest.param(
        ("raft", "heartbeat"),
        5,
        "raft.heartbeat: unknown key; did you mean 'heartbeat_ms'?",
        id="unknown-nested",
    ),
    pytest.param(
        ("nodes", 1, "adress"),
        "x",
        "nodes[1].adress: unknown key; did you mean 'address'?",
        id="unknown-node-key",
    ),
    pytest.param(
        ("balancer", "zzz"),
        1,
        "balancer.zzz: unknown key; known keys: strategy",
        id="unknown-no-hint",
    ),
    pytest.param(
        ("raft", "heartbeat_ms"),
        True,
        "raft.heartbeat_ms: must be an integer, got True",
        id="bool-is-not-int",
    ),
    pytest.param(("tick_ms",), 2.5, "tick_ms: must be an integer, got 2.5", id="float"),
    pytest.param(
        ("raft", "pre_vote"),
        "yes",
        "raft.pre_vote: must be true or false, got 'yes'",
        id="str-is-not-bool",
    ),
    pytest.param(("raft",), [1], "raft: must be a mapping of settings, got [1]", id="section"),
    pytest.param(
        ("nodes", 1, "id"),
        "",
        f"nodes[1].id: {NAME_RULE}, got ''",
        id="empty-id",
    ),
    pytest.param(
        ("nodes", 1, "id"),
        "n 2",
        f"nodes[1].id: {NAME_RULE}, got 'n 2'",
        id="bad-id",
    ),
    pytest.param(
        ("nodes", 1, "id"),
        "..",
        f"nodes[1].id: {NAME_RULE}, got '..'",
        id="dot-id",
    ),
    pytest.param(
        ("nodes", 1, "id"),
        2,
        f"nodes[1].id: {NAME_RULE}, got 2",
        id="int-id",
    ),
    pytest.param(
        ("cluster",),
        "a/b",
        f"cluster: {NAME_RULE}, got 'a/b'",
        id="bad-cluster",
    ),
    pytest.param(
        ("nodes", 2, "id"),
        "n1",
        "nodes[2].id: duplicate id 'n1' (also nodes[0].id)",
        id="duplicate-id",
    ),
    pytest.param(
        ("nodes", 2, "address"),
        "tcp://127.0.0.1:7101",
        "nodes[2].address: 'tcp://127.0.0.1:7101' is already used by nodes[0].address",
        id="dup-address",
    ),
    pytest.param(
        ("nodes", 2, "client_address"),
        "tcp://127.0.0.1:7101",
        "nodes[2].client_address: 'tcp://127.0.0.1:7101' is already used by nodes[0].address",
        id="client-is-peer",
    ),
    pytest.param(
        ("nodes", 2, "client_address"),
        "tcp://127.0.0.1:7202",
        "nodes[2]."
        "client_address: 'tcp://127.0.0.1:7202' is already used by nodes[1]."
        "client_address",
        id="dup-client",
    ),
    pytest.param(
        ("nodes", 2, "client_address"),
        "tcp://127.0.0.1:7103",
        "nodes[2].client_address: 'tcp://127.0.0.1:7103' is already used by nodes[2].address",
        id="client-is-own-peer",
    ),
    pytest.param(
        ("nodes", 0, "address"),
        "127.0.0.1:7101",
        "nodes[0].address: must be tcp://HOST:PORT, got '127.0.0.1:7101'",
        id="no-scheme",
    ),
    pytest.param(
        ("nodes", 0, "address"),
        "tcp://127.0.0.1",
        "nodes[0].address: must be tcp://HOST:PORT, got 'tcp://127.0.0.1'",
        id="no-port",
    ),
    pytest.param(
        ("nodes", 0, "address"),
        "tcp://127.0.0.1:0",
        "nodes[0].address: port must be 1..65535, got 0",
        id="port-0",
    ),
    pytest.param(
        ("nodes", 0, "client_address"),
        "tcp://127.0.0.1:65536",
        "nodes[0].client_address: port must be 1..65535, got 65536",
        id="port-high",
    ),
    pytest.param(
        ("nodes", 0, "address"),
        "tcp://999.0.0.1:7101",
        "nodes[0].address: host '999.0.0.1' is not a valid IP address",
        id="bad-ip",
    ),
    pytest.param(
        ("nodes", 0, "address"),
        "tcp://bad_host!:7101",
        "nodes[0].address: host 'bad_host!' is not a host name or IP address",
        id="bad-host",
    ),
    pytest.param(
        ("nodes", 0, "address"),
        "tcp://0.0.0.0:7101",
        "nodes[0].address: host 0.0.0.0 "
        "is a wildcard that peers cannot connect to; use the node's own address",
        id="wildcard",
    ),
    pytest.param(
        ("nodes", 0, "address"),
        "tcp://127.0.0.1:65500",
        "nodes[0].client_address: "
        "not given, and the default (peer port 65500 + 100) exceeds 65535; give it "
        "explicitly",
        id="client-default-overflows",
    ),
    pytest.param(
        ("nodes", 0, "weight"), 0, "nodes[0].weight: must be a positive integer, got 0", id="weight"
    ),
    pytest.param(
        ("nodes", 0, "zone"), "", "nodes[0].zone: must be a non-empty string, got ''", id="zone"
    ),
    pytest.param(
        ("nodes",),
        [{"id": "w", "address": "tcp://h:1", "role": "witness"}],
        "nodes: no voter: at least one node needs role voter (witnesses and learners never lead)",
        id="no-voter",
    ),
    pytest.param(
        ("data_dir",), "", "data_dir: must be a non-empty path string, got ''", id="data-dir-empty"
    ),
    pytest.param(
        ("data_dir",),
        ["d"],
        "data_dir: must be a non-empty path string, got ['d']",
        id="data-dir-list",
    ),
    pytest.param(("tick_ms",), 0, "tick_ms: must be a positive integer, got 0", id="tick-zero"),
    pytest.param(
        ("tick_ms",),
        60,
        "tick_ms: must be at most raft.heartbeat_ms (50), got 60",
        id="tick-above-heartbeat",
    ),
    pytest.param(
        ("raft", "heartbeat_ms"),
        -5,
        "raft.heartbeat_ms: must be a positive integer, got -5",
        id="negative",
    ),
    pytest.param(
        ("transport", "max_message_bytes"),
        16383,
        "transport.max_message_bytes: must be at least 16384, got 16383",
        id="message-limit-below-a-useful-write",
    ),
    pytest.param(
        ("replication", "compression_threshold_bytes"),
        -1,
        "replication.compression_threshold_bytes: must be at least 0, got -1",
        id="negative-threshold",
    ),
    pytest.param(
        ("raft", "election_timeout_min_ms"),
        50,
        "raft.election_timeout_min_ms: must be greater than raft.heartbeat_ms (50), got 50",
        id="election-vs-heartbeat",
    ),
    pytest.param(
        ("raft", "election_timeout_max_ms"),
        149,
        "raft.election_timeout_max_ms: must "
        "be at least raft.election_timeout_min_ms (150), got 149",
        id="election-max",
    ),
    pytest.param(
        ("raft",),
        {"heartbeat_ms": 51, "election_timeout_min_ms": 55},
        "raft.election_timeout_min_ms: at tick_ms 10, raft.heartbeat_ms comes to 6 ticks and "
        "raft.election_timeout_min_ms to 6: the election timeout must be at least one tick "
        "longer than the heartbeat",
        id="election-vs-heartbeat-in-ticks",
    ),
    pytest.param(
        ("gossip", "probe_timeout_ms"),
        800,
        "gossip.probe_timeout_ms: must be less than gossip.probe_interval_ms (800), got 800",
        id="probe-timeout",
    ),
    pytest.param(
        ("transport", "peer_silence_ms"),
        100,
        "transport.peer_silence_ms: must be "
        "greater than transport.peer_heartbeat_ms (100), got 100",
        id="silence",
    ),
    pytest.param(
        ("replication", "snapshot_chunk_bytes"),
        1 << 24,
        "replication."
        "snapshot_chunk_bytes: must be less than transport.max_message_bytes "
        "(16777216), got 16777216",
        id="chunk-vs-message",
    ),
    pytest.param(
        ("raft",),
        {"lease_reads": True, "check_quorum": False},
        "raft.lease_reads: needs raft.check_quorum: true",
        id="lease-without-check-quorum",
    ),
    pytest.param(
        ("gossip", "profile"),
        "wan",
        "gossip.profile: must be one of lan, fast, got 'wan'",
        id="profile",
    ),
    pytest.param(
        ("balancer", "strategy"),
        "fastest",
        "balancer.strategy: must be one of "
        "round_robin, least_connections, weighted, random, ip_hash, p2c, got 'fastest'",
        id="strategy",
    ),
]


@pytest.mark.parametrize(("path", "value", "expected"), INVALID)
def test_each_invalid_topology_gives_its_one_line(
    path: tuple[Any, ...], value: Any, expected: str
) -> None:
    assert problems_of(changed(path, value)) == (f"{SOURCE}: {expected}",)


def test_top_level_must_be_a_mapping() -> None:
    assert problems_of(None) == (
        f"{SOURCE}: top level: must be a mapping with at least cluster and nodes, "
        "got nothing (empty document)",
    )
    assert problems_of(["cluster"]) == (
        f"{SOURCE}: top level: must be a mapping with at least cluster and nodes, got ['cluster']",
    )


def test_every_problem_is_reported_at_once() -> None:
    data = base_topology()
    data.update(tick_ms=True, gossip={"profile": "wan"}, clustr="x")
    data["nodes"][0]["role"] = "leader"
    data["nodes"][1]["address"] = "tcp://127.0.0.1:7103"
    data["nodes"][2]["weight"] = 0
    data["raft"] = {"election_timeout_min_ms": 40, "election_timeout_max_ms": 30}
    assert sorted(problems_of(data)) == sorted(
        f"{SOURCE}: {line}"
        for line in [
            "clustr: unknown key; did you mean 'cluster'?",
            "tick_ms: must be an integer, got True",
            "nodes[0].role: must be one of voter, learner, witness, got 'leader'",
            "nodes[2].weight: must be a positive integer, got 0",
            "nodes[2].address: 'tcp://127.0.0.1:7103' is already used by nodes[1].address",
            "gossip.profile: must be one of lan, fast, got 'wan'",
            "raft.election_timeout_min_ms: must be greater than raft.heartbeat_ms (50), got 40",
            "raft.election_timeout_max_ms: must be at least raft.election_timeout_min_ms (40), "
            "got 30",
        ]
    )


def test_removed_keys_are_ignored_with_one_warning_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = base_topology()
    data["transport"] = {"tcp_nodelay": False, "send_hwm": 5}
    data["replication"] = {"batch_entries": "any value", "batch_delay_ms": -1}
    with caplog.at_level("WARNING", logger="caddy.config"):
        config = parse_topology(data, SOURCE)
    assert config.transport == TransportSettings(send_hwm=5)
    assert config.replication == ReplicationSettings()
    assert [record.getMessage().split("; ")[0] for record in caplog.records] == [
        f"{SOURCE}: transport.tcp_nodelay: ignored: no longer a setting",
        f"{SOURCE}: replication.batch_entries: ignored: no longer a setting",
        f"{SOURCE}: replication.batch_delay_ms: ignored: no longer a setting",
    ]
    assert problems_of(changed(("transport", "tcp_nodelayy"), True)) == (
        f"{SOURCE}: transport.tcp_nodelayy: unknown key; known keys: "
        + ", ".join(spec.name for spec in fields(TransportSettings)),
    )


def test_huge_and_self_referencing_values_are_shown_briefly() -> None:
    loop: list[Any] = []
    loop.append(loop)
    (line,) = problems_of(changed(("nodes", 0, "id"), loop))
    assert "got [[" in line and len(line) < 200
    (line,) = problems_of(changed(("nodes", 0, "id"), "x " * 10_000))
    assert len(line) < 300


# --- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cluster: [\n", "line 2, column 1: not valid YAML: expected the node content"),
        ("cluster: a\ncluster: b\n", "line 2, column 1: not valid YAML: duplicate key 'cluster'"),
        ("cluster: a\n  nodes: 3\n", "line 2, column 8: not valid YAML: mapping values are not "),
        ("", "top level: must be a mapping with at least cluster and nodes, got nothing"),
        ("- n1\n", "top level: must be a mapping with at least cluster and nodes, got ['n1']"),
        ("when: 2001-02-30\n", "not valid YAML: day is out of range for month"),
    ],
)
def test_file_level_problems_name_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_topology(path)
    (line,) = caught.value.problems
    assert line.startswith(f"{path}: {expected}")


def test_unreadable_files_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"cluster: \xff\n")
    for path, expected in [
        (missing, "cannot read: No such file or directory"),
        (tmp_path, "cannot read: Is a directory"),
        (binary, "not UTF-8 text (byte 9)"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_topology(str(path))
        assert caught.value.problems == (f"{path}: {expected}",)


def test_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "cluster: c\n"
        "base: &base {address: 'tcp://127.0.0.1:1', role: voter}\n"
        "nodes:\n  - {<<: *base, id: a, role: voter}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_topology(path)
    assert caught.value.problems == (
        f"{path}: base: unknown key; known keys: cluster, data_dir, tick_ms, log_level, nodes, "
        "raft, transport, failover, replication, gossip, balancer, services",
    )


# --- warnings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "warning"),
    [
        (["voter"] * 4, "an even number of voters (4) tolerates no more failures than 3"),
        (["voter", "witness"], "an even number of voters (2) tolerates no more failures than 1"),
        (["voter", "voter", "voter", "learner"], None),
        (["voter", "voter", "witness"], None),
    ],
)
def test_an_even_number_of_voters_is_a_warning(roles: list[str], warning: str | None) -> None:
    nodes = [
        {"id": f"n{i}", "address": f"tcp://127.0.0.1:{7101 + i}", "role": role}
        for i, role in enumerate(roles)
    ]
    config = parse_topology({"cluster": "c", "nodes": nodes}, SOURCE)
    assert config.warnings == ((f"{SOURCE}: nodes: {warning}",) if warning else ())


# --- JSON -------------------------------------------------------------------------------------


def test_json_round_trip_is_exact_and_to_dict_reparses() -> None:
    data = base_topology()
    data["nodes"][0].update(zone="z1", weight=3, role="witness")
    data["nodes"].append({"id": "n4", "address": "tcp://[::1]:7104", "role": "learner"})
    data["nodes"].append({"id": "n5", "address": "tcp://localhost:7105", "role": "witness"})
    data.update(gossip={"profile": "fast", "suspicion_mult": 5}, tick_ms=7)
    config = parse_topology(data, SOURCE, Path("/base"))
    assert config.warnings  # 2 voters + 2 witnesses: the warning travels too
    assert ClusterConfig.from_json(config.to_json()) == config
    assert parse_topology(config.to_dict(), SOURCE) == config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{", "<json>: not valid JSON: Expecting property name"),
        ("[]", "<json>: top level: must be an object, got []"),
        ('{"source": 3}', "<json>: source: must be a string, got 3"),
        ('{"source": "x.yaml", "cluster": "c"}', "x.yaml: nodes: missing (required)"),
    ],
)
def test_from_json_rejects_garbage_with_a_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ClusterConfig.from_json(text)
    assert caught.value.problems[0].startswith(expected)


def _valid_topologies() -> st.SearchStrategy[dict[str, Any]]:
    role = st.sampled_from(["voter", "learner", "witness"])
    node_roles = st.lists(role, min_size=1, max_size=6).map(lambda roles: ["voter", *roles])
    ms = st.integers(min_value=1, max_value=10_000)

    def build(roles: list[str], heartbeat: int, extra: int, zone: str | None) -> dict[str, Any]:
        tick_ms = max(1, heartbeat // 3)
        extra = max(extra, tick_ms)  # the election timeout stays a tick above the heartbeat
        nodes = [
            {"id": f"node-{i}", "address": f"tcp://127.0.0.{i + 1}:{9000 + i}", "role": r}
            for i, r in enumerate(roles)
        ]
        nodes[-1]["zone"] = zone
        return {
            "cluster": "prop",
            "data_dir": "rel/dir",
            "tick_ms": tick_ms,
            "nodes": nodes,
            "raft": {
                "heartbeat_ms": heartbeat,
                "election_timeout_min_ms": heartbeat + extra,
                "election_timeout_max_ms": heartbeat + 2 * extra,
            },
            "gossip": {"profile": "fast" if extra % 2 else "lan"},
            "balancer": {"strategy": "ip_hash"},
        }

    return st.builds(build, node_roles, ms, ms, st.none() | st.sampled_from(["a", "rack-2"]))


@settings(max_examples=60, deadline=None)
@given(_valid_topologies())
def test_json_round_trip_for_generated_topologies(data: dict[str, Any]) -> None:
    config = parse_topology(data, "gen.yaml", Path("/b"))
    assert ClusterConfig.from_json(config.to_json()) == config


# --- fuzz: never a traceback ------------------------------------------------------------------

_KNOWN_KEYS = [
    "cluster", "data_dir", "tick_ms", "nodes", "raft", "transport", "failover", "replication",
    "gossip", "balancer", "id", "address", "client_address", "role", "zone", "weight",
    "heartbeat_ms", "election_timeout_min_ms", "election_timeout_max_ms", "profile",
    "probe_timeout_ms", "strategy", "max_message_bytes", "snapshot_chunk_bytes",
]  # fmt: skip
_keys = st.sampled_from(_KNOWN_KEYS) | st.text(max_size=6) | st.integers() | st.none()
_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["tcp://127.0.0.1:7101", "tcp://127.0.0.1:65500", "voter", "witness", "n1"])
)
_anything = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=25,
)
_shaped = st.fixed_dictionaries(
    {},
    optional={
        "cluster": _anything,
        "nodes": st.lists(st.dictionaries(_keys, _anything, max_size=6), max_size=4) | _anything,
        "raft": st.dictionaries(_keys, _anything, max_size=4) | _anything,
        "gossip": st.dictionaries(_keys, _anything, max_size=4),
        "tick_ms": _anything,
        "data_dir": _anything,
    },
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_anything, _shaped))
def test_parse_topology_only_returns_a_config_or_raises_config_error(data: object) -> None:
    try:
        result = parse_topology(copy.deepcopy(data), "fuzz.yaml")
    except ConfigError as error:
        assert error.problems
        assert all(line.startswith("fuzz.yaml: ") and "\n" not in line for line in error.problems)
    else:
        assert isinstance(result, ClusterConfig)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "t.yaml"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.text(alphabet=st.sampled_from(list("cluster:nodes-[]{}&*!|>'\"#%@`, \n\t1.~?")), max_size=60)
)
def test_load_topology_never_raises_anything_but_config_error(fuzz_file: Path, text: str) -> None:
    fuzz_file.write_text(text)
    try:
        load_topology(fuzz_file)
    except ConfigError as error:
        assert all(line.startswith(f"{fuzz_file}: ") for line in error.problems)


# --- shipped topologies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "count", "first_port"), [("local-3", 3, 7101), ("local-5", 5, 7111)]
)
def test_shipped_topologies_load_cleanly(name: str, count: int, first_port: int) -> None:
    path = REPO / "topologies" / f"{name}.yaml"
    config = load_topology(path)
    assert config.warnings == ()
    assert config.cluster == "local"
    assert config.data_dir == REPO / "topologies" / "data" / name
    assert config.voters == tuple(f"n{i}" for i in range(1, count + 1))
    assert [(n.host, n.port) for n in config.nodes] == [
        ("127.0.0.1", first_port + i) for i in range(count)
    ]
    assert [n.client_address for n in config.nodes] == [
        f"tcp://127.0.0.1:{first_port + 100 + i}" for i in range(count)
    ]


def test_config_module_imports_no_zmq_pykka_or_threading() -> None:
    code = (
        "import sys, caddy.config; "
        "print(sorted({'zmq', 'pykka', 'threading', 'socket'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_readme_documents_every_key() -> None:
    readme = (REPO / "topologies" / "README.md").read_text()
    keys = [spec.name for cls in (NodeConfig, *SETTINGS) for spec in fields(cls)]
    keys += ["cluster", "data_dir", "tick_ms", "nodes"]
    assert [key for key in keys if f"| `{key}` |" not in readme] == []
