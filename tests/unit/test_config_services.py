"""The `services:` section of a topology (CONTRACT 7): what loads, and one line per mistake."""

from __future__ import annotations

import pytest

from caddy.config import BackendConfig, ConfigError, ServiceHealth, parse_topology

SOURCE = "topology.yaml"
NODES = [
    {"id": "n1", "address": "tcp://127.0.0.1:7101"},
    {"id": "n2", "address": "tcp://127.0.0.1:7102"},
    {"id": "n3", "address": "tcp://127.0.0.1:7103"},
]
API = {
    "strategy": "p2c",
    "listen": {"n1": "tcp://127.0.0.1:8101", "n2": "tcp://127.0.0.1:8102"},
    "health": {"interval_ms": 500, "failure_threshold": 2},
    "backends": [
        {"id": "b1", "address": "tcp://127.0.0.1:9001", "weight": 2},
        {"id": "b2", "address": "tcp://127.0.0.1:9002"},
    ],
}


def topology(services, **top):
    return {"cluster": "demo", "nodes": NODES, "services": services, **top}


def problems_of(services, **top) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_topology(topology(services, **top), SOURCE)
    return caught.value.problems


def test_the_contract_example_loads():
    (api,) = parse_topology(topology({"api": API}), SOURCE).services
    assert api.name == "api" and api.strategy == "p2c"
    assert api.listen == (("n1", "tcp://127.0.0.1:8101"), ("n2", "tcp://127.0.0.1:8102"))
    assert api.health == ServiceHealth(interval_ms=500, failure_threshold=2)
    assert api.backends == (
        BackendConfig("b1", "tcp://127.0.0.1:9001", 2),
        BackendConfig("b2", "tcp://127.0.0.1:9002", 1),
    )
    assert (api.slow_start_ms, api.panic_threshold_percent) == (10_000, 50)


def test_a_bare_service_takes_the_balancer_strategy_and_round_trips():
    config = parse_topology(topology({"web": None}, balancer={"strategy": "ip_hash"}), SOURCE)
    assert config.services[0].strategy == "ip_hash" and config.services[0].backends == ()
    assert parse_topology(config.to_dict(), SOURCE) == config
    full = parse_topology(topology({"api": API}), SOURCE)
    assert parse_topology(full.to_dict(), SOURCE) == full
    assert parse_topology(topology(None), SOURCE).services == ()


@pytest.mark.parametrize(
    "services, problem",
    [
        ([], "services: must be a mapping of service names, got []"),
        ({"-x": {}}, "services.-x: must be letters, digits"),
        ({"api": 3}, "services.api: must be a mapping, got 3"),
        (
            {"api": {"stratgy": "p2c"}},
            "services.api.stratgy: unknown key; did you mean 'strategy'?",
        ),
        ({"api": {"strategy": "fastest"}}, "services.api.strategy: must be one of round_robin"),
        ({"api": {"listen": {"n9": "tcp://127.0.0.1:1"}}}, "services.api.listen.n9: no node 'n9'"),
        ({"api": {"listen": {"n1": "localhost:1"}}}, "services.api.listen.n1: must be tcp://"),
        ({"api": {"health": {"interval_ms": 0}}}, "services.api.health.interval_ms: must be a"),
        ({"api": {"health": {"http": "health"}}}, "services.api.health.http: must be a path"),
        ({"api": {"backends": {"b1": 1}}}, "services.api.backends: must be a list of backends"),
        ({"api": {"backends": [{"id": "b1"}]}}, "services.api.backends[0].address: missing"),
        (
            {"api": {"backends": [{"id": "b1", "address": "tcp://h:1", "weight": 0}]}},
            "services.api.backends[0].weight: must be a positive integer, got 0",
        ),
        (
            {"api": {"backends": [{"id": "b", "address": "tcp://h:1"}] * 2}},
            "services.api.backends[1].id: 'b' is listed twice",
        ),
        ({"api": {"slow_start_ms": -1}}, "services.api.slow_start_ms: must be at least 0"),
    ],
)
def test_each_mistake_is_one_line_naming_the_file_and_key(services, problem):
    problems = problems_of(services)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{SOURCE}: {problem}"), problems
