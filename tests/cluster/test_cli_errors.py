"""User errors at the command line: exit status 2, one line per problem, never a traceback."""

import subprocess
import sys

import pytest
import yaml

from tests.harness import CADDY_CTL, CADDY_NODE, write_topology

GOOD_NODES = [
    {"id": "n1", "address": "tcp://127.0.0.1:7901"},
    {"id": "n2", "address": "tcp://127.0.0.1:7902"},
    {"id": "n3", "address": "tcp://127.0.0.1:7903"},
]

INVALID = {
    "missing-cluster": ({"nodes": GOOD_NODES}, "topology.yaml: cluster:"),
    "missing-nodes": ({"cluster": "c"}, "topology.yaml: nodes:"),
    "bad-role": (
        {"cluster": "c", "nodes": [*GOOD_NODES[:2], {**GOOD_NODES[2], "role": "leader"}]},
        "topology.yaml: nodes[2].role: must be one of voter, learner, witness, got 'leader'",
    ),
    "duplicate-id": (
        {"cluster": "c", "nodes": [*GOOD_NODES[:2], {**GOOD_NODES[2], "id": "n1"}]},
        "topology.yaml: nodes[2].id:",
    ),
    "duplicate-address": (
        {
            "cluster": "c",
            "nodes": [*GOOD_NODES[:2], {**GOOD_NODES[2], "address": "tcp://127.0.0.1:7901"}],
        },
        "topology.yaml: nodes[2].address:",
    ),
    "bad-address": (
        {"cluster": "c", "nodes": [*GOOD_NODES[:2], {**GOOD_NODES[2], "address": "udp://x"}]},
        "topology.yaml: nodes[2].address:",
    ),
    "unknown-key": ({"cluster": "c", "nodes": GOOD_NODES, "raftt": {}}, "topology.yaml: raftt:"),
    "wrong-type": (
        {"cluster": "c", "nodes": GOOD_NODES, "raft": {"heartbeat_ms": "fast"}},
        "topology.yaml: raft.heartbeat_ms:",
    ),
    "bad-range": (
        {
            "cluster": "c",
            "nodes": GOOD_NODES,
            "raft": {"heartbeat_ms": 100, "election_timeout_min_ms": 50},
        },
        "topology.yaml: raft.election_timeout_min_ms:",
    ),
    "no-voters": (
        {"cluster": "c", "nodes": [{**n, "role": "learner"} for n in GOOD_NODES]},
        "topology.yaml: nodes:",
    ),
    "not-a-mapping": (["just", "a", "list"], "topology.yaml:"),
}


def run(script, *args):
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=60
    )


def assert_clean_error(result, expected_line, status=2):
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    assert any(expected_line in line for line in result.stderr.splitlines()), result.stderr


@pytest.mark.parametrize("case", sorted(INVALID))
@pytest.mark.parametrize("script", ["node", "ctl"])
def test_invalid_topology_exits_2_naming_file_and_key(tmp_path, case, script):
    document, expected = INVALID[case]
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(document))
    if script == "node":
        result = run(CADDY_NODE, str(path))
    else:
        result = run(CADDY_CTL, "--topology", str(path), "status")
    assert_clean_error(result, expected)


def test_unparsable_yaml_and_missing_file(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text("cluster: [unclosed\n")
    assert_clean_error(run(CADDY_NODE, str(path)), "topology.yaml")
    assert_clean_error(
        run(CADDY_NODE, str(tmp_path / "absent.yaml")), str(tmp_path / "absent.yaml")
    )


def test_unknown_node_and_bad_arguments(tmp_path):
    topology = write_topology(tmp_path, 3)
    assert_clean_error(run(CADDY_NODE, str(topology), "--node", "n9"), "caddy-node: --node")
    assert_clean_error(run(CADDY_NODE), "usage: caddy-node")
    assert_clean_error(run(CADDY_NODE, str(topology), "--log-level", "LOUD"), "usage: caddy-node")
    assert_clean_error(run(CADDY_CTL, "--topology", str(topology)), "usage: caddy-ctl")
    assert_clean_error(
        run(CADDY_CTL, "--topology", str(topology), "frobnicate"), "usage: caddy-ctl"
    )
    assert_clean_error(run(CADDY_CTL, "--topology", str(topology), "status", "n9"), "caddy-ctl:")


def test_address_in_use_is_one_line_and_status_1(tmp_path, processes):
    topology = write_topology(tmp_path, 1)
    first = processes.node(topology, "n1")
    from tests.harness import ctl_json, wait_until

    wait_until(lambda: ctl_json(topology, "status"), 20, "n1 to answer")
    second = run(CADDY_NODE, str(topology), "--node", "n1")
    assert second.returncode == 1
    assert "Traceback" not in second.stderr
    assert "cannot start" in second.stderr
    assert first.poll() is None
