"""Node events in a real 3-node cluster: after kill -9 of the leader every survivor's own program
hears the new leader and term, and a callback that raises on every event breaks nothing."""

from __future__ import annotations

import json
import subprocess
import sys

from actors.local_cluster import REPO, LocalCluster, write_topology
from caddy.client import Client
from tests.harness import wait_until

NODES = ("n1", "n2", "n3")


def events_of(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def start_recording(cluster, processes, node_id):
    folder = cluster.topology.parent
    command = [sys.executable, "-m", "tests.cluster.event_recorder", str(cluster.topology)]
    command += [node_id, str(folder / f"{node_id}.events")]
    with open(folder / f"{node_id}.log", "ab") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    processes.started.append(process)
    cluster.nodes[node_id] = process


def test_survivors_hear_the_new_leader_after_kill_9_of_the_old_one(tmp_path, processes):
    cluster = LocalCluster(write_topology(tmp_path, 3), processes)
    for node_id in NODES:
        start_recording(cluster, processes, node_id)
    files = {node_id: tmp_path / f"{node_id}.events" for node_id in NODES}
    # The prober's timeout is short: after the kill, asking every node for its status waits that
    # long for the dead one.
    with Client(cluster.topology, timeout=10) as client, Client(cluster.topology, 1) as prober:
        old = wait_until(prober.leader, 30, "a leader")
        client.put("before", 1)
        old_term = client.status(old)["term"]
        elected = wait_until(
            lambda: [e for e in events_of(files[old]) if e["kind"] == "leader.elected"],
            10,
            f"{old}'s program to hear of its election",
        )
        assert elected[-1]["term"] == old_term and elected[-1]["node"] == old
        cluster.kill(old)
        survivors = [node_id for node_id in NODES if node_id != old]
        new = wait_until(
            lambda: (leader := prober.leader()) not in (None, old) and leader, 30, "a new leader"
        )
        client.put("after", 2)
        new_term = client.status(new)["term"]

    def heard_new_leader(node_id):
        return [
            e
            for e in events_of(files[node_id])
            if e["kind"] == "leader.changed" and e["leader"] == new and e["term"] == new_term
        ]

    for node_id in survivors:
        heard = wait_until(lambda n=node_id: heard_new_leader(n), 10, f"{node_id} to hear {new}")
        assert heard[-1]["node"] == node_id and heard[-1]["term"] > old_term
        assert heard[-1]["state"] == ("leader" if node_id == new else "follower")
        sequence = [e["seq"] for e in events_of(files[node_id])]
        assert sequence == sorted(set(sequence)), "seq is strictly increasing"
    new_events = events_of(files[new])
    assert any(e["kind"] == "leader.elected" and e["term"] == new_term for e in new_events)
    # The callback that raised on every event neither stopped the node nor the recorder.
    for node_id in survivors:
        assert cluster.nodes[node_id].poll() is None, f"{node_id} exited"
        kinds = {e["kind"] for e in events_of(files[node_id])}
        assert {"node.starting", "leader.changed", "member.state"} <= kinds
    wait_until(
        lambda: "a user's callback failed" in (tmp_path / f"{new}.log").read_text(),
        10,
        "the raising callback's error in the log",
    )
