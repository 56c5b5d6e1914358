"""Snapshots: requested at the threshold, log compaction, chunked InstallSnapshot to laggards."""

import pytest

from caddy.raft.messages import InstallSnapshot, SnapshotResponse
from caddy.raft.progress import ProgressState
from tests.unit.raft.cluster import Cluster


def snapshot_everyone(cluster):
    """What a driver does on snapshot_request: snapshot the state machine, compact, save."""
    for node_id, node in cluster.nodes.items():
        if node_id in cluster.down or node.applied_index == node.log.snapshot.index:
            continue
        data = b"|".join(cluster.commands(node_id))
        meta = node.compact(node.applied_index, data)
        cluster.storage[node_id].save_snapshot(meta, data)


def test_a_snapshot_is_requested_once_the_threshold_is_reached():
    cluster = Cluster(snapshot_threshold=10)
    cluster.elect("a")
    cluster.propose("a", *[b"%d" % i for i in range(5)])
    assert not [r for r in cluster.readies["a"] if r.snapshot_request]
    cluster.propose("a", *[b"%d" % i for i in range(5, 12)])
    requests = [r.snapshot_request for r in cluster.readies["a"] if r.snapshot_request]
    assert len(requests) == 1 and requests[0] >= 10


def test_a_snapshot_is_requested_once_applied_entries_hold_the_threshold_in_bytes():
    cluster = Cluster(snapshot_threshold=1000, snapshot_threshold_bytes=100)
    cluster.elect("a")
    cluster.propose("a", b"x" * 60)
    assert not [r for r in cluster.readies["a"] if r.snapshot_request]
    cluster.propose("a", b"y" * 60)  # 120 bytes applied, 3 entries: the bytes decide
    requests = [r.snapshot_request for r in cluster.readies["a"] if r.snapshot_request]
    assert len(requests) == 1
    snapshot_everyone(cluster)
    cluster.readies["a"].clear()
    cluster.propose("a", b"z" * 60)  # the count starts again after the snapshot
    assert not [r for r in cluster.readies["a"] if r.snapshot_request]
    cluster.propose("a", b"w" * 70)  # (past the 121 bytes of the snapshot too)
    assert len([r for r in cluster.readies["a"] if r.snapshot_request]) == 1


def test_a_larger_state_than_the_byte_threshold_waits_for_as_many_bytes_of_log():
    """A snapshot costs in proportion to the state: with a state larger than the threshold, the
    next one waits until the log has grown by the size of the last snapshot."""
    cluster = Cluster(snapshot_threshold=1000, snapshot_threshold_bytes=100)
    leader = cluster.elect("a")
    cluster.propose("a", b"x" * 120)
    data = b"s" * 300  # the state machine's snapshot: three times the threshold
    cluster.storage["a"].save_snapshot(leader.compact(leader.applied_index, data), data)
    cluster.readies["a"].clear()
    cluster.propose("a", b"y" * 150, b"z" * 100)  # 250 bytes: past the threshold, not the state
    assert not [r for r in cluster.readies["a"] if r.snapshot_request]
    cluster.propose("a", b"w" * 60)  # 310 bytes
    assert len([r for r in cluster.readies["a"] if r.snapshot_request]) == 1


def test_compact_drops_the_log_and_keeps_working():
    cluster = Cluster()
    leader = cluster.elect("a")
    cluster.propose("a", b"x", b"y")
    snapshot_everyone(cluster)
    assert leader.log.entries == [] and leader.log.snapshot.index == 3
    assert cluster.storage["a"].load().snapshot.index == 3
    cluster.propose("a", b"z")
    assert cluster.commands("b") == [b"x", b"y", b"z"]
    with pytest.raises(ValueError):
        leader.compact(leader.applied_index + 1, b"")


def test_a_lagging_follower_gets_the_snapshot_in_chunks_and_catches_up():
    cluster = Cluster(snapshot_chunk_bytes=4)
    leader = cluster.elect("a")
    cluster.isolate("c")
    cluster.propose("a", b"alpha", b"beta", b"gamma")
    snapshot_everyone(cluster)
    cluster.propose("a", b"delta")
    cluster.heal()
    cluster.outbox = []
    cluster.tick(3)
    chunks = [
        m
        for r in cluster.readies["a"]
        for to, m in r.messages
        if to == "c" and isinstance(m, InstallSnapshot)
    ]
    assert sorted({m.offset for m in chunks}) == [0, 4, 8, 12]
    assert chunks[-1].done
    assert cluster.snapshots["c"] == b"alpha|beta|gamma"
    follower = cluster.nodes["c"]
    assert follower.log.snapshot.index == leader.log.snapshot.index
    assert cluster.commands("c") == [b"delta"]
    assert leader.progress_of("c").state is ProgressState.REPLICATE
    # The installed snapshot is durable: a restart starts from it.
    cluster.crash("c")
    restarted = cluster.start("c")
    assert restarted.log.snapshot.index == leader.log.snapshot.index
    assert cluster.storage["c"].load().snapshot_data == b"alpha|beta|gamma"


def test_lost_chunks_are_resent_and_a_failed_transfer_restarts():
    cluster = Cluster(snapshot_chunk_bytes=2)
    leader = cluster.elect("a")
    cluster.isolate("c")
    cluster.propose("a", b"abcdefgh")
    snapshot_everyone(cluster)
    cluster.heal()
    cluster.drop = lambda sender, to, message: isinstance(message, SnapshotResponse)
    cluster.tick(3)
    progress = leader.progress_of("c")
    assert progress.state is ProgressState.SNAPSHOT
    chunks = [
        m
        for r in cluster.readies["a"]
        for to, m in r.messages
        if to == "c" and isinstance(m, InstallSnapshot)
    ]
    assert len(chunks) > 1 and {m.offset for m in chunks} == {0}  # resent, never advanced
    leader.report_snapshot_failed("c")
    assert progress.state is ProgressState.PROBE
    cluster.drop = None
    cluster.tick(5)
    assert cluster.snapshots["c"] == b"abcdefgh"
    assert cluster.nodes["c"].commit_index == leader.commit_index


def test_a_snapshot_older_than_the_commit_index_is_acknowledged_not_installed():
    cluster = Cluster()
    leader = cluster.elect("a")
    cluster.propose("a", b"x", b"y")
    follower = cluster.nodes["b"]
    follower.step(InstallSnapshot(leader.term, "a", leader.log.snapshot, 0, b"", True))
    ready = follower.ready()
    assert ready.snapshot is None
    assert ready.messages[-1][1].success


def test_jitter_stretches_the_thresholds_by_each_nodes_own_draw():
    """Nodes that draw differently snapshot at different points, so they do not all pause at
    once; never before the threshold, never after the stretched one."""
    first_requests = set()
    for seed in range(20):
        cluster = Cluster(seed=seed, snapshot_threshold=10, snapshot_jitter_percent=50)
        cluster.elect("a")
        for i in range(20):
            cluster.propose("a", b"%d" % i)
        requests = [r.snapshot_request for r in cluster.readies["a"] if r.snapshot_request]
        first_requests.add(requests[0])
    assert len(first_requests) > 1
    assert all(10 <= index <= 15 for index in first_requests), first_requests


def test_entries_applied_while_a_snapshot_is_written_still_count_after_it():
    """A driver may compact once the snapshot is durable: what was applied meanwhile stays in the
    log and must still count towards the next snapshot's threshold."""
    cluster = Cluster(snapshot_threshold=1000, snapshot_threshold_bytes=100)
    leader = cluster.elect("a")
    cluster.propose("a", b"x" * 60, b"y" * 60)
    meta = leader.snapshot_meta(leader.applied_index)  # the snapshot is taken here...
    cluster.readies["a"].clear()
    cluster.propose("a", b"z" * 60, b"w" * 60)  # ...these are applied while it is written...
    leader.compact(meta.index, b"s")  # ...and it is durable now
    cluster.storage["a"].save_snapshot(meta, b"s")
    assert not [r for r in cluster.readies["a"] if r.snapshot_request]
    cluster.propose("a", b"v")  # 121 bytes past the snapshot: over the threshold
    assert [r for r in cluster.readies["a"] if r.snapshot_request]
