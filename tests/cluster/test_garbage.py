"""A live node process fed garbage on both endpoints keeps serving and counts every drop."""

import os
import socket
from urllib.parse import urlsplit

import msgpack

from caddy.client import Client
from caddy.config import load_topology
from caddy.wire import PROTOCOL_VERSION
from tests.harness import LocalCluster, send_each, wait_until, write_topology


def frame(kind, body, *, cluster="test", sender="n2", version=PROTOCOL_VERSION):
    return msgpack.packb([version, cluster, sender, kind, 0, 0, body], use_bin_type=True)


PEER_GARBAGE = [
    os.urandom(64),
    frame("raft.append", {})[:-3],
    frame("raft.append", {}, version=9),
    frame("raft.append", {}, cluster="elsewhere"),
    frame("nosuch.kind", {}),
    frame("raft.vote", {"term": "one", "sender": "n2"}),  # wrong field types
    frame("raft.append", {"term": 1}),  # missing fields
    frame("swim.ping", {"x": [1, 2]}),
    b"\x00" * (2 * 1024 * 1024),  # over the 1 MiB message limit of this topology
]


def total_drops(client, node):
    return sum(client.status(node)["dropped"].values())


def test_garbage_on_every_endpoint_is_counted_and_the_node_keeps_serving(tmp_path, processes):
    topology = write_topology(
        tmp_path,
        3,
        transport={"max_message_bytes": 1024 * 1024},
        raft={"max_append_bytes": 256 * 1024},
        replication={"snapshot_chunk_bytes": 256 * 1024},
    )
    local = LocalCluster(topology, processes)
    local.start("n1", "n2", "n3")
    config = load_topology(topology)
    target = config.node("n1")
    with Client(topology, timeout=10) as client:
        local.leader(client)
        client.put("before", 1)
        before = total_drops(client, "n1")

        send_each(target.address, PEER_GARBAGE)
        send_each(target.client_address, PEER_GARBAGE[:5])
        for address in (target.address, target.client_address):
            url = urlsplit(address)
            with socket.create_connection((url.hostname, url.port), timeout=5) as raw:
                raw.sendall(os.urandom(200))

        expected = len(PEER_GARBAGE) + 5 + 2
        wait_until(
            lambda: total_drops(client, "n1") - before >= expected,
            20,
            f"{expected} more drops on n1",
        )
        assert local.nodes["n1"].poll() is None
        client.put("after", 2)
        assert client.get("before") == 1 and client.get("after") == 2
        assert client.status("n1")["state"] in ("leader", "follower")
