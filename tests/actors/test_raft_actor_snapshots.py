"""The Raft actor's own snapshots are written by a writer thread, off the Raft thread: the stored
log is cut only once the snapshot is durable, a snapshot asked for meanwhile follows, and a
snapshot from the leader never races the writer."""

import threading

import pytest

from actors import local_cluster
from actors.raft_actor import RaftActor, SnapshotWritten
from actors.status_board import StatusBoard
from actors.transport import InboundBatch
from caddy.config import load_topology
from caddy.raft.messages import AppendEntries, InstallSnapshot, VoteResponse
from caddy.raft.ready import Snapshot
from caddy.raft.types import Entry, EntryKind, SnapshotMeta
from caddy.replication.kv import KeyValueStore
from caddy.replication.sessions import SessionStateMachine
from caddy.storage import SqliteLogStorage
from tests.actors.test_raft_actor_entries import RecordingTransport, acknowledge, put

SNAPSHOT_EVERY = 3  # applied entries


class GatedWrites:
    """Stands in for the storage's `write_snapshot`: records each write's start and end, and
    holds each write of the actor's own snapshots until `release(index)`."""

    def __init__(self, write):
        self._write = write
        self.events = []
        self._gates = {}
        self._lock = threading.Lock()

    def __call__(self, meta, data):
        self.events.append(("start", meta.index))
        if threading.current_thread().name.startswith("snapshot-"):
            self._gate(meta.index).wait(10)
        self._write(meta, data)
        self.events.append(("end", meta.index))

    def release(self, index):
        self._gate(index).set()

    def release_all(self):
        with self._lock:
            gates = list(self._gates.values())
        for gate in gates:
            gate.set()

    def _gate(self, index):
        with self._lock:
            return self._gates.setdefault(index, threading.Event())


@pytest.fixture
def leader(tmp_path):
    topology = local_cluster.write_topology(
        tmp_path,
        3,
        cluster="test",
        data_dir=str(tmp_path / "data"),
        raft={"pre_vote": False, "snapshot_threshold": SNAPSHOT_EVERY},
    )
    actor = RaftActor(
        load_topology(topology), "n1", RecordingTransport(), KeyValueStore(), StatusBoard()
    )
    gate = GatedWrites(actor._storage.write_snapshot)
    actor._storage.write_snapshot = gate
    actor.core.campaign()
    actor._process_ready()
    actor.core.step(VoteResponse(actor.core.term, "n2", True, False))
    actor._process_ready()
    acknowledge(actor, actor.core.last_index)
    yield actor, gate
    gate.release_all()
    actor.on_stop()


def write_entries(actor, count, first_seq):
    """`count` committed entries of one write each."""
    for seq in range(first_seq, first_seq + count):
        actor.on_receive(InboundBatch([put(seq, f"k{seq}", seq, seq)]))
        acknowledge(actor, actor.core.last_index)


def next_told(actor):
    """The next message told to the actor (it is not running: the test delivers it)."""
    return actor.actor_inbox.get(timeout=10).message


def stored_through(actor, index):
    """How many entries up to `index` the stored log holds."""
    query = "SELECT count(*) FROM entries WHERE log_index <= ?"
    (count,) = actor._storage._connection.execute(query, (index,)).fetchone()
    return count


def test_the_stored_log_is_cut_only_once_the_snapshot_is_written(leader):
    actor, gate = leader
    write_entries(actor, SNAPSHOT_EVERY, first_seq=1)  # the Raft thread is not held up
    snapshot_index = actor.core.log.snapshot.index
    assert snapshot_index > 0  # compacted in memory at once
    assert gate.events == [("start", snapshot_index)]
    assert stored_through(actor, snapshot_index) == snapshot_index  # but stored whole
    gate.release(snapshot_index)
    written = next_told(actor)
    assert isinstance(written, SnapshotWritten) and written.error is None
    actor.on_receive(written)
    assert stored_through(actor, snapshot_index) == 0
    assert gate.events == [("start", snapshot_index), ("end", snapshot_index)]


def test_a_snapshot_asked_for_during_a_write_is_taken_after_it(leader):
    actor, gate = leader
    write_entries(actor, 2 * SNAPSHOT_EVERY, first_seq=1)  # the second one is due meanwhile
    first = actor.core.log.snapshot.index
    assert gate.events == [("start", first)]
    gate.release(first)
    actor.on_receive(next_told(actor))
    second = actor.core.log.snapshot.index
    assert second > first  # taken when the first was written
    gate.release(second)
    actor.on_receive(next_told(actor))
    assert gate.events == [("start", first), ("end", first), ("start", second), ("end", second)]
    assert stored_through(actor, second) == 0


def test_a_snapshot_from_the_leader_waits_for_the_one_being_written(leader):
    actor, gate = leader
    write_entries(actor, SNAPSHOT_EVERY, first_seq=1)
    own = actor.core.log.snapshot.index
    received = SnapshotMeta(own + 10, actor.core.term)
    data = SessionStateMachine(KeyValueStore()).snapshot()
    ready = actor.core.ready()
    ready.snapshot = Snapshot(received, data)
    # Released a moment after the leader's snapshot arrives: it must wait for the write.
    threading.Timer(0.2, gate.release, (own,)).start()
    actor._persist(ready)
    assert gate.events == [
        ("start", own),
        ("end", own),
        ("start", received.index),
        ("end", received.index),
    ]
    actor.on_receive(next_told(actor))  # the late news of our own snapshot changes nothing
    actor._storage.close()
    reopened = SqliteLogStorage(actor._storage.directory, node_id="n1", cluster="test")
    try:
        assert reopened.load().snapshot.index == received.index
    finally:
        reopened.close()


def test_snapshots_go_on_after_a_leaders_snapshot_overtook_a_wanted_one(leader):
    """Our snapshot is being written, another is due, and a leader's snapshot is installed before
    ours is reported: the wanted one finds nothing to compact, yet later ones must still come."""
    actor, gate = leader
    core = actor.core
    write_entries(actor, SNAPSHOT_EVERY, first_seq=1)
    own = core.log.snapshot.index
    write_entries(actor, SNAPSHOT_EVERY, first_seq=100)  # due again while ours is written
    term = core.term + 1
    received = SnapshotMeta(core.commit_index + 10, term, core.log.snapshot.membership)
    data = SessionStateMachine(KeyValueStore()).snapshot()
    gate.release(own)
    core.step(InstallSnapshot(term, "n2", received, 0, data, True))  # n2 leads a newer term
    actor._process_ready()  # waits for our write, then installs the leader's
    actor.on_receive(next_told(actor))  # our SnapshotWritten: the wanted one has nothing to do
    previous = received.index
    for _ in range(2 * SNAPSHOT_EVERY):  # the new leader replicates well past the threshold
        entry = Entry(index=previous + 1, term=term, kind=EntryKind.NOOP, data=b"")
        core.step(AppendEntries(term, "n2", previous, term, (entry,), previous + 1))
        actor._process_ready()
        previous += 1
    assert core.applied_index == previous
    assert core.log.snapshot.index > received.index
