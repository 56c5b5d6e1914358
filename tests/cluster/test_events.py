"""Node events in a real 3-node cluster: after kill -9 of the leader every survivor's own program
hears the new leader and term, a callback that raises on every event breaks nothing, and a node
with an `events_address` publishes its events there."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
import zmq

from actors.local_cluster import REPO, LocalCluster, free_ports, write_topology
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


def test_a_node_publishes_its_events_on_its_pub_socket(tmp_path, processes):
    path = write_topology(tmp_path, 3)
    document = yaml.safe_load(path.read_text())
    for node, port in zip(document["nodes"], free_ports(3), strict=True):
        node["events_address"] = f"tcp://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    cluster = LocalCluster(path, processes)
    cluster.start(*NODES)
    subscriber = zmq.Context.instance().socket(zmq.SUB)
    subscriber.setsockopt(zmq.LINGER, 0)
    subscriber.connect(document["nodes"][0]["events_address"])
    subscriber.subscribe(b"drain.")
    try:
        with Client(path, timeout=10) as client:
            wait_until(client.leader, 20, "a leader")

            def drain_event() -> dict | None:
                client.drain("n1", 1)  # again until the subscription is in place (slow joiner)
                client.undrain("n1")
                if not subscriber.poll(200):
                    return None
                kind, body = subscriber.recv_multipart()
                event = json.loads(body)
                assert kind.decode() == event["kind"]
                return event

            event = wait_until(drain_event, 20, "a drain event from n1's PUB socket")
            assert event["node"] == "n1" and event["kind"].startswith("drain.")
    finally:
        subscriber.close()
