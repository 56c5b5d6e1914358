"""Growing, shrinking and replacing the members of a running cluster of real nodes under writes
(CONTRACT 8): new nodes started with `caddy-node --join` (at addresses the running nodes'
topology file does not list), `caddy-ctl reconfigure` planning the rest; every acknowledged
write kept, none applied twice."""

from __future__ import annotations

import json

import yaml

from actors.local_cluster import write_topology
from caddy.client import Client
from tests.cluster.failover_helpers import FAST_CHECKS
from tests.cluster.writers import finish_writers, start_writers
from tests.harness import LocalCluster, run_ctl, wait_until


def subset(full, path, node_ids):
    """A topology file like `full` with only `node_ids`: what the running nodes were given."""
    document = yaml.safe_load(full.read_text())
    document["nodes"] = [node for node in document["nodes"] if node["id"] in node_ids]
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def voters(client: Client) -> list[str]:
    leader = client.leader()
    return client.status(leader)["membership"]["voters"] if leader else []


def ctl(topology, *args: str):
    return run_ctl(topology, "--timeout", "10", *args, timeout=180)


def test_grow_from_3_to_5_by_joining_then_shrink_back_with_reconfigure(tmp_path, processes):
    every = write_topology(tmp_path, 5, failover=FAST_CHECKS)
    three = subset(every, tmp_path / "three.yaml", {"n1", "n2", "n3"})
    cluster = LocalCluster(three, processes)
    cluster.start("n1", "n2", "n3")
    with Client(every, timeout=10) as client:
        cluster.leader(client)
        writers = start_writers(every, 2)
        for node in ("n4", "n5"):  # the running nodes' file lists neither
            processes.node(every, node, "--join")
        wait_until(lambda: voters(client) == ["n1", "n2", "n3", "n4", "n5"], 60, "n4 and n5 voters")
        assert "new peer n4 at tcp://" in cluster.log_path("n1").read_text()
        cluster.restart("n2")  # kill -9, then started again with the 3-node file
        wait_until(
            lambda: "membership from the log: voters n1, n2, n3, n4, n5 (the topology file says "
            "voters n1, n2, n3)" in cluster.log_path("n2").read_text(),
            20,
            "n2 saying where its membership came from",
        )
        new_leader = "n4" if client.leader() == "n5" else "n5"
        other = "n5" if new_leader == "n4" else "n4"
        moved = run_ctl(every, "--timeout", "10", "transfer-leader", new_leader, timeout=30)
        assert moved.returncode == 0, moved.stderr  # n1..n3 reach the new leader, and follow it

        planned = ctl(every, "--json", "reconfigure", str(three), "--dry-run")
        assert planned.returncode == 0, planned.stderr
        steps = [(s["action"], s["node"]) for s in json.loads(planned.stdout)["steps"]]
        assert steps == [("remove", other), ("transfer", new_leader), ("remove", new_leader)]
        assert voters(client) == ["n1", "n2", "n3", "n4", "n5"]  # a dry run changes nothing

        shrunk = ctl(every, "reconfigure", str(three))
        assert shrunk.returncode == 0, shrunk.stderr
        assert shrunk.stdout.splitlines() == [
            f"remove {other}: done",
            f"move leadership off {new_leader}: done",
            f"remove {new_leader}: done",
        ]
        assert voters(client) == ["n1", "n2", "n3"]
        finish_writers(every, writers)
        again = ctl(every, "reconfigure", str(three))
        assert again.stdout.strip() == "nothing to change"
        for node in ("n4", "n5"):  # told by the leader, which sent them the log until then
            wait_until(
                lambda n=node: "removed from the cluster" in (tmp_path / f"{n}.log").read_text(),
                20,
                f"{node} saying it was removed",
            )
        for process in processes.started[3:]:  # n4 and n5 are needed for nothing now
            process.kill()
            process.wait(10)
        client.put("without-n4-n5", 1)
        assert client.get("without-n4-n5") == 1


def test_replace_a_node_that_catches_up_through_a_snapshot(tmp_path, processes):
    every = write_topology(tmp_path, 4, failover=FAST_CHECKS, raft={"snapshot_threshold": 200})
    old = subset(every, tmp_path / "old.yaml", {"n1", "n2", "n3"})
    new = subset(every, tmp_path / "new.yaml", {"n1", "n2", "n4"})
    cluster = LocalCluster(old, processes)
    cluster.start("n1", "n2", "n3")
    with Client(every, timeout=10) as client:
        cluster.leader(client)
        for i in range(400):  # enough for the leader to have compacted its log
            client.put(f"before-{i}", i)
        writers = start_writers(every, 2)
        processes.node(every, "n4")  # a plain start; reconfigure adds it
        replaced = ctl(every, "reconfigure", str(new))
        assert replaced.returncode == 0, replaced.stderr
        assert replaced.stdout.splitlines()[0].startswith("add n4 as a learner (tcp://")
        assert replaced.stdout.splitlines()[-1] == "remove n3: done"
        assert voters(client) == ["n1", "n2", "n4"]
        finish_writers(every, writers)
        assert client.get("before-399") == 399
        assert "installed the leader's snapshot" in (tmp_path / "n4.log").read_text()
        cluster.kill("n1")  # n4 counts: n2 and n4 are a quorum of the new membership
        client.put("after-n1-died", 1)
        assert client.get("after-n1-died") == 1
