"""Every message the core builds fits `max_message_bytes`, whatever the entries' sizes and the
settings allow: full appends to a follower that catches up, and every chunk of a snapshot that is
several messages long, with `raft.max_append_bytes` and `snapshot_chunk_bytes` set just below
the limit (the largest the topology allows)."""

import random

import pytest

from caddy.bounds import MAX_NAME_LENGTH
from caddy.raft.codec import to_wire
from caddy.raft.messages import AppendEntries, InstallSnapshot
from caddy.sizes import MIN_MESSAGE_BYTES, max_write_bytes
from caddy.wire import Codec
from tests.unit.raft.cluster import Cluster

LONGEST_NAME = "\N{GRINNING FACE}" * MAX_NAME_LENGTH  # the envelope at its largest


def checked_cluster(limit, sent):
    codec = Codec(LONGEST_NAME, LONGEST_NAME, max_message_bytes=limit, compress_threshold=None)
    cluster = Cluster(
        max_message_bytes=limit,
        max_append_bytes=limit - 1,
        max_append_entries=64,
        snapshot_chunk_bytes=limit - 1,
        max_inflight=4,
    )

    def measure(sender, to, message):
        sent.append((type(message), len(codec.encode(message.kind, to_wire(message)))))
        return False

    cluster.drop = measure
    return cluster


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("limit", [MIN_MESSAGE_BYTES, 1 << 20])
def test_appends_and_snapshot_chunks_never_exceed_the_limit(limit, seed):
    rng = random.Random(seed)
    sent = []
    cluster = checked_cluster(limit, sent)
    cluster.elect("a")
    cluster.crash("c")
    largest_entry = max_write_bytes(limit) + 1024  # one write and its batch framing, at most
    for _ in range(150):
        size = rng.choice([rng.randint(1, 64), rng.randint(1, limit // 64), largest_entry])
        cluster.propose("a", bytes(size))
    cluster.start("c")
    cluster.tick(5)  # the leader probes and catches c up from its log
    assert cluster.nodes["c"].applied_index == cluster.nodes["a"].applied_index
    appends = [size for kind, size in sent if kind is AppendEntries]
    assert max(appends) <= limit
    assert max(appends) > limit - 4 * 4096  # full appends were sent: the bound was at work

    cluster.crash("b")
    for _ in range(20):
        cluster.propose("a", bytes(rng.randint(1, 64)))
    leader = cluster.nodes["a"]
    data = rng.randbytes(5 * limit)  # a state of five messages' worth: chunks of the largest
    cluster.storage["a"].save_snapshot(leader.compact(leader.applied_index, data), data)
    sent.clear()
    cluster.start("b")
    cluster.tick(10)
    assert cluster.nodes["b"].log.snapshot.index == leader.log.snapshot.index
    chunks = [size for kind, size in sent if kind is InstallSnapshot]
    assert len(chunks) >= 5 and max(chunks) <= limit
