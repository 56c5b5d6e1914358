"""The Raft actor's own snapshots are packed and written by a writer thread, off the Raft thread:
the logs are compacted only once the snapshot is durable, a snapshot from the leader never races
the writer, and snapshots go on after one overtook another."""

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
from caddy.replication.node_stack import node_stack
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
        self._started = threading.Condition()

    def __call__(self, meta, data):
        with self._started:
            self.events.append(("start", meta.index))
            self._started.notify_all()
        if threading.current_thread().name.startswith("snapshot-"):
            self._gate(meta.index).wait(10)
        self._write(meta, data)
        self.events.append(("end", meta.index))

    def release(self, index):
        self._gate(index).set()

    def wait_for_starts(self, count):
        """The index of the `count`th write, once it started (the writer thread runs apart)."""
        with self._started:
            assert self._started.wait_for(
                lambda: sum(event == "start" for event, _ in self.events) >= count, timeout=10
            )
            return [index for event, index in self.events if event == "start"][count - 1]

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
    # No jitter: the tests count entries to each snapshot (a node's draw would move it by up to
    # half the threshold).
    actor.core._snapshot_jitter_percent, actor.core._snapshot_stretch_percent = 0, 100
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


def held_snapshot_index(gate):
    """The index of the one snapshot being written (held by the gate)."""
    index = gate.wait_for_starts(1)
    assert gate.events == [("start", index)]
    return index


def test_the_logs_are_compacted_only_once_the_snapshot_is_written(leader):
    actor, gate = leader
    write_entries(actor, SNAPSHOT_EVERY, first_seq=1)
    snapshot_index = held_snapshot_index(gate)
    # Replication goes on while it is written (one entry: not enough for the next snapshot).
    write_entries(actor, 1, first_seq=100)
    assert actor.core.log.snapshot.index == 0  # neither log is compacted yet
    assert stored_through(actor, snapshot_index) == snapshot_index
    gate.release(snapshot_index)
    written = next_told(actor)
    assert isinstance(written, SnapshotWritten) and written.error is None
    actor.on_receive(written)
    assert actor.core.log.snapshot.index == snapshot_index
    assert stored_through(actor, snapshot_index) == 0
    assert gate.events == [("start", snapshot_index), ("end", snapshot_index)]
    restored = node_stack(KeyValueStore())
    restored.sessions.restore(written.data)  # the bytes are the state at that index
    assert restored.locking.inner.read("k1") == 1 and restored.locking.inner.read("k100") is None


def test_while_a_snapshot_is_written_no_other_starts_and_the_next_follows_it(leader):
    actor, gate = leader
    write_entries(actor, 2 * SNAPSHOT_EVERY, first_seq=1)  # a second one would be due meanwhile
    first = held_snapshot_index(gate)
    gate.release(first)
    actor.on_receive(next_told(actor))  # compacts, then asks for the one now due
    assert actor.core.log.snapshot.index == first
    second = gate.wait_for_starts(2)
    assert second > first
    gate.release(second)
    actor.on_receive(next_told(actor))
    assert actor.core.log.snapshot.index == second
    assert stored_through(actor, second) == 0


def test_a_snapshot_from_the_leader_waits_for_the_one_being_written(leader):
    actor, gate = leader
    write_entries(actor, SNAPSHOT_EVERY, first_seq=1)
    own = held_snapshot_index(gate)
    received = SnapshotMeta(own + 10, actor.core.term)
    data = node_stack(KeyValueStore()).sessions.snapshot()
    ready = actor.core.ready()
    ready.snapshot = Snapshot(received, data)
    writing = actor._writer.writing

    class ReleasedByTheWait:
        """Our write is released only when the Raft thread waits for it: saving the leader's
        snapshot without waiting would start (and be recorded) while ours is still held."""

        def result(self):
            gate.release(own)
            return writing.result()

    actor._writer.writing = ReleasedByTheWait()
    actor.driver._persist(ready)
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


def test_snapshots_go_on_after_a_leaders_snapshot_overtook_ours(leader):
    """Ours is written, a leader's is installed before ours is reported, and another is due
    meanwhile: ours is dropped, and the one due must still be taken, and later ones too."""
    actor, gate = leader
    core = actor.core
    write_entries(actor, SNAPSHOT_EVERY, first_seq=1)
    own = held_snapshot_index(gate)
    term = core.term + 1
    received = SnapshotMeta(core.commit_index + 10, term, core.log.snapshot.membership)
    data = node_stack(KeyValueStore()).sessions.snapshot()
    gate.release(own)
    core.step(InstallSnapshot(term, "n2", received, 0, data, True))  # n2 leads a newer term
    actor._process_ready()  # waits for our write, then installs the leader's
    previous = received.index

    def replicate(count):
        nonlocal previous
        for _ in range(count):  # the new leader replicates
            entry = Entry(index=previous + 1, term=term, kind=EntryKind.NOOP, data=b"")
            core.step(AppendEntries(term, "n2", previous, term, (entry,), previous + 1))
            actor._process_ready()
            previous += 1

    replicate(2 * SNAPSHOT_EVERY)  # due again before our SnapshotWritten is handled
    actor.on_receive(next_told(actor))  # ours: overtaken, dropped; the due one starts
    assert core.log.snapshot.index == received.index
    due = gate.wait_for_starts(3)  # ours, the leader's (installed through the same call), this
    assert due > received.index
    gate.release(due)
    actor.on_receive(next_told(actor))
    assert core.log.snapshot.index == due
