"""A witness topology on real nodes (2 data voters and a witness, as topologies/witness-3.yaml):
kill -9 of either data node, including the case where the survivor lags behind the witness, and
writes resume without the dead node; the witness is never the serving leader, and after the dead
node's restart no acknowledged write is missing."""

import os
import random
import shutil

import pytest

from actors.local_cluster import Firewall
from caddy.client import Client
from tests.harness import LocalCluster, started_cluster, wait_until, write_topology

ROLES = ["voter", "voter", "witness"]


@pytest.fixture
def cluster(tmp_path, processes):
    return started_cluster(tmp_path, processes, 3, roles=ROLES)


@pytest.fixture
def cut_cluster(tmp_path, processes):
    """The witness topology on per-node addresses, and a firewall between them (a paused node
    would still find the leader's appends in its socket buffers when resumed: only a cut makes
    it lag for good)."""
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        pytest.skip("making a data node lag needs root and iptables (.ci/run installs iptables)")
    base = f"127.{random.randrange(1, 255)}.{random.randrange(0, 255)}"
    hosts = [f"{base}.{i}" for i in (2, 3, 4)]
    local = LocalCluster(write_topology(tmp_path, 3, hosts=hosts, roles=ROLES), processes)
    local.start("n1", "n2", "n3")
    firewall = Firewall()
    yield local, dict(zip(("n1", "n2", "n3"), hosts, strict=True)), firewall
    firewall.heal()


def data_leader(client):
    return wait_until(client.leader, 20, "a data node to lead")


def test_killing_the_leader_while_the_other_data_node_lags_hands_over_through_the_witness(
    cut_cluster,
):
    cluster, hosts, firewall = cut_cluster
    with Client(cluster.topology, timeout=20) as client:
        leader = data_leader(client)
        survivor = ({"n1", "n2"} - {leader}).pop()
        client.put("before", 0)
        firewall.cut(hosts[leader], hosts[survivor])  # it misses what follows; the leader and
        acknowledged = [f"k{i}" for i in range(20)]  # the witness commit it
        for key in acknowledged:
            client.put(key, key)
        lag = client.status(leader)["commit_index"] - client.status(survivor)["last_log_index"]
        assert lag > 0, "the survivor was not cut off"
        cluster.kill(leader)  # (the cut stays: the dead leader's kernel would still send
        client.put("after", 1)  # what it had buffered) served once the witness brought the
        # survivor up to date and handed it the leadership
        assert client.leader() == survivor
        assert client.status("n3")["state"] == "witness"  # never the serving leader
        witness_votes = client.status(survivor)["votes"]["recent"]
        assert any(v["candidate"] == "n3" and v["granted"] for v in witness_votes), witness_votes
        assert [client.get(key) for key in acknowledged] == acknowledged
        firewall.heal()
        cluster.start(leader)
        wait_until(
            lambda: (
                client.status(leader)["applied_index"] >= client.status(survivor)["applied_index"]
            ),
            30,
            f"{leader} to catch up",
        )
        cluster.kill(survivor)  # the restarted node now serves alone with the witness
        assert [client.get(key) for key in ["before", *acknowledged, "after"]] == [
            0,
            *acknowledged,
            1,
        ]


def test_killing_the_follower_data_node_leaves_the_leader_and_witness_serving(cluster):
    with Client(cluster.topology, timeout=20) as client:
        leader = data_leader(client)
        follower = ({"n1", "n2"} - {leader}).pop()
        cluster.kill(follower)
        for i in range(10):
            client.put(f"k{i}", i)
        assert client.leader() == leader
        assert [client.get(f"k{i}") for i in range(10)] == list(range(10))
