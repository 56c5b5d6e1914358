"""The largest write commits and replicates to every follower, one that catches up from a snapshot
included; one byte more is refused with ValueTooLarge and nothing is appended (CONTRACT §4).

The topology sets `raft.max_append_bytes` and `replication.snapshot_chunk_bytes` one byte below
`transport.max_message_bytes`, the largest the settings allow, so that only the node's own sizing
(`caddy.sizes`) keeps its appends and chunks within the limit; the values are random bytes, which
compression cannot shrink.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import msgpack
import pytest
import zmq

from caddy.client import Client
from caddy.errors import ValueTooLarge
from caddy.sizes import max_write_bytes
from caddy.wire import Codec
from tests.harness import started_cluster, wait_until
from tests.sizing import value_for_payload

LIMIT = 1024 * 1024
LARGEST = max_write_bytes(LIMIT)
BIG_WRITES = 4  # writes of the largest size, sent at once so that the leader batches them


def random_value(key, payload_bytes):
    """Incompressible bytes whose put payload is exactly `payload_bytes`."""
    return os.urandom(len(value_for_payload("put", key, payload_bytes)))


@pytest.fixture
def cluster(tmp_path, processes):
    return started_cluster(
        tmp_path,
        processes,
        3,
        transport={"max_message_bytes": LIMIT},
        raft={"max_append_bytes": LIMIT - 1, "snapshot_threshold": 10},
        replication={"snapshot_chunk_bytes": LIMIT - 1},
    )


def put_with(topology, key, value):
    with Client(topology, timeout=30) as client:
        client.put(key, value)


def refusal_of_raw_write(config, node_id, value):
    """Send a put past the client's own check, straight to `node_id`; the answer's body."""
    codec = Codec(config.cluster, "raw-writer", max_message_bytes=LIMIT)
    body = {"key": "over", "value": value, "client": "c" * 32, "seq": 1, "ack": 0}
    with zmq.Context() as context, context.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(config.node(node_id).client_address)
        sock.send(codec.encode("kv.put", body, request_id=7))
        assert sock.poll(10_000), f"{node_id} did not answer the oversized write"
        answer = codec.decode(sock.recv())
    assert answer.kind == "kv.error", answer
    return answer.body


def test_the_largest_write_commits_everywhere_and_one_byte_more_is_refused(cluster):
    with Client(cluster.topology, timeout=30) as client:
        leader = cluster.leader(client)
        late, other = [node for node in ("n1", "n2", "n3") if node != leader]
        cluster.kill(late)  # it will have to catch up from a snapshot

        values = {f"big-{n}": random_value(f"big-{n}", LARGEST) for n in range(BIG_WRITES)}
        with ThreadPoolExecutor(BIG_WRITES) as pool:
            for done in [pool.submit(put_with, cluster.topology, k, v) for k, v in values.items()]:
                done.result()
        big_index = client.status(leader)["last_log_index"]

        # One byte over: the client refuses it before sending, and so does the leader.
        over = random_value("over", LARGEST + 1)
        with pytest.raises(ValueTooLarge) as raised:
            client.put("over", over)
        assert (raised.value.size, raised.value.limit) == (LARGEST + 1, LARGEST)
        before = client.status(leader)["last_log_index"]
        body = refusal_of_raw_write(client.config, leader, over)
        assert body["code"] == "value_too_large" and body["retry"] is False
        assert (body["size"], body["limit"]) == (LARGEST + 1, LARGEST)
        assert client.status(leader)["last_log_index"] == before  # nothing appended
        assert client.get("over") is None

        for i in range(20):  # past the snapshot threshold: the leader compacts its log
            client.put(f"small-{i}", i)
        wait_until(
            lambda: client.status(leader)["snapshot_index"] >= big_index,
            30,
            f"{leader} to snapshot past the large writes",
        )

        cluster.start(late)

        def caught_up():
            status = client.statuses().get(late)
            leader_applied = client.status(leader)["applied_index"]
            return status and status["applied_index"] >= leader_applied and status

        status = wait_until(caught_up, 60, f"{late} to catch up")
        assert status["snapshot_index"] >= big_index  # it caught up from a snapshot
        assert client.status(other)["applied_index"] >= big_index

        # The old leader gone, the two others serve every value, the late one among them.
        cluster.kill(leader)
        survivors = (late, other)
        wait_until(
            lambda: any(client.status(n)["state"] == "leader" for n in survivors),
            30,
            "a new leader",
        )
        for key, value in values.items():
            assert client.get(key) == value
        assert len(msgpack.packb(["put", "big-0", values["big-0"], None])) == LARGEST
