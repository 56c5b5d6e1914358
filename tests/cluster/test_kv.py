"""The replicated key-value service through real `caddy-node` processes: client and caddy-ctl."""

import pytest

from caddy.client import Client
from caddy.errors import NoQuorum, Unavailable
from tests.harness import run_ctl, wait_until, write_topology


@pytest.fixture
def cluster(tmp_path, processes):
    topology = write_topology(tmp_path, 3)
    for node_id in ("n1", "n2", "n3"):
        processes.node(topology, node_id)
    with Client(topology, timeout=10) as client:
        wait_until(client.leader, 20, "a leader")
    return topology


def test_python_client_put_get_cas_delete(cluster):
    with Client(cluster, timeout=10) as client:
        assert client.get("k") is None
        assert client.put("k", "v") is None
        assert client.get("k") == "v"
        assert client.cas("k", "wrong", "x") is False
        assert client.get("k") == "v"
        assert client.cas("k", "v", "w") is True
        assert client.get("k") == "w"
        assert client.delete("k") is True
        assert client.delete("k") is False
        assert client.get("k") is None
        value = {"list": [1, 2.5, None, True], "bytes": b"\x00\xff", "nested": {"a": "b"}}
        client.put("typed", value)
        assert client.get("typed") == value
        assert client.cas("absent", None, 1) is True
        assert client.get("absent") == 1


def test_every_node_applies_the_same_writes(cluster):
    with Client(cluster, timeout=10) as client:
        for i in range(50):
            client.put(f"key-{i}", i)

        def converged():
            statuses = client.statuses()
            applied = {s["applied_index"] for s in statuses.values() if s}
            return len(applied) == 1 and len(statuses) == 3 and applied

        wait_until(converged, 10, "all three nodes to apply the same index")


def test_caddy_ctl_key_value_commands(cluster):
    assert run_ctl(cluster, "put", "colour", "blue", timeout=10).returncode == 0
    got = run_ctl(cluster, "get", "colour", timeout=10)
    assert (got.returncode, got.stdout.strip()) == (0, "blue")
    assert run_ctl(cluster, "cas", "colour", "red", "green", timeout=10).returncode == 1
    assert run_ctl(cluster, "cas", "colour", "blue", "green", timeout=10).returncode == 0
    assert run_ctl(cluster, "--json", "get", "colour", timeout=10).stdout.strip() == (
        '{"key": "colour", "found": true, "value": "green"}'
    )
    assert run_ctl(cluster, "delete", "colour", timeout=10).stdout.strip() == "deleted"
    missing = run_ctl(cluster, "get", "colour", timeout=10)
    assert missing.returncode == 1 and "no key 'colour'" in missing.stderr
    leader = run_ctl(cluster, "leader", timeout=10)
    assert leader.returncode == 0 and leader.stdout.strip() in {"n1", "n2", "n3"}
    status = run_ctl(cluster, "status", timeout=10)
    rows = [line.split() for line in status.stdout.splitlines()[1:]]
    assert sorted(row[2] for row in rows) == ["follower", "follower", "leader"]


def test_no_cluster_means_unavailable(tmp_path):
    topology = write_topology(tmp_path, 3)
    with Client(topology, timeout=1) as client, pytest.raises(Unavailable):
        client.put("k", "v")


def test_no_quorum_means_no_quorum_not_a_timeout(tmp_path, processes):
    topology = write_topology(tmp_path, 3)
    processes.node(topology, "n1")
    with Client(topology, timeout=1.5) as client:
        wait_until(lambda: client.statuses()["n1"], 20, "n1 to answer")
        with pytest.raises(NoQuorum):  # n1 answers no_quorum once its start-up window passed
            client.put("k", "v")
