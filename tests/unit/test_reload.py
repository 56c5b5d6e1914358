"""Settings reload (caddy.reload): what a re-read topology changes at once, what needs a restart."""

from __future__ import annotations

import dataclasses

import pytest

from caddy.config import ConfigError, FailoverSettings, HealthCheck, parse_topology
from caddy.reload import BACKENDS_NOTE, MEMBERSHIP_NOTE, plan_reload

BASE = {
    "cluster": "demo",
    "data_dir": "/srv/caddy",
    "nodes": [
        {"id": "n1", "address": "tcp://127.0.0.1:7101"},
        {"id": "n2", "address": "tcp://127.0.0.1:7102"},
        {"id": "n3", "address": "tcp://127.0.0.1:7103"},
    ],
}


def config(**sections):
    return parse_topology({**BASE, **sections}, "topology.yaml")


def test_the_same_file_changes_nothing():
    plan = plan_reload(config(), config())
    assert plan.document() == {"applied": [], "restart_needed": [], "notes": []}
    assert plan.config == config()


def test_raft_timings_and_failover_settings_change_live():
    new = config(
        raft={"election_timeout_min_ms": 400, "election_timeout_max_ms": 800},
        failover={"failure_threshold": 5, "health_checks": [{"tcp": "127.0.0.1:5432"}]},
        transport={"request_timeout_ms": 2000},
    )
    plan = plan_reload(config(), new)
    assert plan.document()["applied"] == [
        "failover.failure_threshold 3 -> 5",
        "failover.health_checks [] -> [{'tcp': '127.0.0.1:5432'}]",
        "raft.election_timeout_max_ms 300 -> 800",
        "raft.election_timeout_min_ms 150 -> 400",
        "transport.request_timeout_ms 30000 -> 2000",
    ]
    assert plan.restart_needed == ()
    assert plan.config.raft.election_timeout_min_ms == 400
    assert plan.config.failover.health_checks == (HealthCheck("tcp", "127.0.0.1:5432"),)
    assert plan.config.transport.request_timeout_ms == 2000
    assert plan.config.data_dir == config().data_dir and plan.config.nodes == config().nodes


def test_what_cannot_change_live_is_reported_and_kept():
    new = config(
        tick_ms=5,
        transport={"max_message_bytes": 8_388_608},
        gossip={"profile": "fast"},
        raft={"heartbeat_ms": 40},
    )
    plan = plan_reload(config(), new)
    assert plan.document()["applied"] == ["raft.heartbeat_ms 50 -> 40"]
    restart = plan.document()["restart_needed"]
    assert "tick_ms 10 -> 5" in restart
    assert "transport.max_message_bytes 16777216 -> 8388608" in restart
    assert "gossip.profile 'lan' -> 'fast'" in restart
    assert plan.config.tick_ms == 10 and plan.config.gossip == config().gossip
    assert plan.config.transport.max_message_bytes == 16 * 1024 * 1024


def test_node_entries_are_the_membership_not_a_setting():
    moved = {**BASE["nodes"][2], "address": "tcp://127.0.0.1:7199"}
    plan = plan_reload(config(), config(nodes=[*BASE["nodes"][:2], moved]))
    assert plan.notes == (MEMBERSHIP_NOTE,)
    assert plan.applied == () and plan.restart_needed == ()
    assert plan.config == config()


def test_live_values_that_do_not_fit_the_running_tick_are_refused():
    """The new file is valid with its own tick of 1 ms; 3 ms timeouts are no ticks at 10."""
    new = config(
        tick_ms=1,
        raft={"heartbeat_ms": 1, "election_timeout_min_ms": 3, "election_timeout_max_ms": 6},
    )
    with pytest.raises(
        ConfigError, match="topology.yaml: tick_ms: must be at most raft.heartbeat_ms"
    ):
        plan_reload(config(), new)


def test_every_failover_key_is_live():
    defaults = FailoverSettings()
    changed = {"enabled": False, "on_event": "/bin/true", "drain_timeout_ms": 5}
    plan = plan_reload(config(), config(failover=changed))
    assert plan.config.failover == dataclasses.replace(defaults, **changed)
    assert len(plan.applied) == 3


def test_the_log_level_changes_live_and_is_checked():
    plan = plan_reload(config(), config(log_level="DEBUG"))
    assert plan.document()["applied"] == ["log_level 'INFO' -> 'DEBUG'"]
    assert plan.config.log_level == "DEBUG"
    with pytest.raises(ConfigError, match="topology.yaml: log_level: must be one of"):
        config(log_level="LOUD")


def test_a_services_backends_are_the_registrys_not_a_setting():
    api = {"backends": [{"id": "b1", "address": "tcp://127.0.0.1:9001"}]}
    plan = plan_reload(config(services={"api": api}), config(services={"api": {"backends": []}}))
    assert plan.notes == (BACKENDS_NOTE.format("services.api.backends"),)
    assert plan.applied == () and plan.restart_needed == ()
