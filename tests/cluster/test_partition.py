"""Network partitions between per-node 127.x.y.z addresses, made with iptables (root only)."""

import os
import random
import shutil
import time

import pytest

from actors.local_cluster import Firewall
from caddy.client import Client
from tests.harness import LocalCluster, wait_until, write_topology

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("iptables") is None,
    reason="partition tests need root and iptables (.ci/run installs iptables when root)",
)


@pytest.fixture
def firewall():
    wall = Firewall()
    yield wall
    wall.heal()


@pytest.fixture
def cluster(tmp_path, processes):
    base = f"127.{random.randrange(1, 255)}.{random.randrange(0, 255)}"
    hosts = [f"{base}.{i}" for i in (2, 3, 4)]
    topology = write_topology(tmp_path, 3, hosts=hosts)
    local = LocalCluster(topology, processes)
    local.start("n1", "n2", "n3")
    return local, dict(zip(("n1", "n2", "n3"), hosts, strict=True))


def test_isolated_leader_accepts_no_write_and_converges_after_healing(cluster, firewall):
    local, hosts = cluster
    with Client(local.topology, timeout=20) as client, Client(local.topology, 1) as probe:
        old = local.leader(client)
        client.put("k", "before")
        for other in set(hosts) - {old}:
            firewall.cut(hosts[old], hosts[other])

        new = wait_until(
            lambda: (leader := probe.leader()) not in (None, old) and leader,
            20,
            "the majority to elect a new leader",
        )
        client.put("k", "majority")

        # The minority side: the old leader may still be stepping down; it never acknowledges.
        write = {"key": "k", "value": "minority", "client": "minority-writer", "seq": 1, "ack": 1}
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            answer = probe.gather([old], "kv.put", write, 1.0, raw=True)[old]
            assert answer is None or answer.kind != "kv.ok", answer
        stepped_down = probe.status(old)
        assert stepped_down["state"] != "leader"
        assert stepped_down["last_step_down"].startswith("CheckQuorum in term"), stepped_down

        firewall.heal()

        def converged():
            statuses = client.statuses()
            terms = {s["term"] for s in statuses.values() if s}
            applied = {s["applied_index"] for s in statuses.values() if s}
            return (
                len(statuses) == 3
                and all(statuses.values())
                and len(applied) == 1
                and (len(terms) == 1)
            )

        wait_until(converged, 30, "the healed cluster to agree on term and applied index")
        assert client.get("k") == "majority"
        assert client.leader() in {"n1", "n2", "n3"}
        assert new != old


def test_a_node_cut_off_says_it_has_no_quorum_and_the_majority_keeps_it(cluster, firewall):
    local, hosts = cluster
    with Client(local.topology, timeout=20) as client, Client(local.topology, 2) as probe:
        leader = local.leader(client)
        cut_off = next(node for node in sorted(hosts) if node != leader)
        majority = sorted(set(hosts) - {cut_off})
        for other in majority:
            firewall.cut(hosts[cut_off], hosts[other])

        alone = wait_until(
            lambda: not (q := probe.status(cut_off)["quorum"])["has_quorum"] and q,
            20,
            f"{cut_off} to say it has no quorum",
        )
        assert alone["reachable"] == [cut_off]
        write = {"key": "refused", "value": 1, "client": "probe", "seq": 1, "ack": 1}
        answer = probe.gather([cut_off], "kv.put", write, 5, raw=True)[cut_off]
        assert answer is not None, f"{cut_off} did not answer a write at once"
        assert (answer.kind, answer.body["code"]) == ("kv.error", "no_quorum")
        for node in majority:
            view = wait_until(
                lambda node=node: (
                    (q := probe.status(node)["quorum"])["reachable"] == majority and q
                ),
                20,
                f"{node} to stop reaching {cut_off}",
            )
            assert view["has_quorum"] is True
        client.put("k", "during")  # the majority side keeps committing

        firewall.heal()
        back = wait_until(
            lambda: (
                (q := probe.status(cut_off)["quorum"])["has_quorum"]
                and q["reachable"] == sorted(hosts)
                and q
            ),
            30,
            f"{cut_off} to regain quorum",
        )
        assert back["since"] > alone["since"]
        wait_until(
            lambda: probe.status(cut_off)["applied_index"] >= probe.status(leader)["applied_index"],
            30,
            "convergence",
        )
        assert probe.get("refused") is None  # answered no_quorum: never applied
