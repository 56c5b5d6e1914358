"""The Raft actor's node events, driven in-process over an in-memory log (the actor takes any
`LogStorage`): leadership won and lost, a membership change, an own snapshot taken."""

import threading

import pykka
import pytest

from actors import local_cluster
from actors.events import EventBus
from actors.raft_actor import RaftActor, SnapshotWritten
from actors.status_board import StatusBoard
from caddy.config import load_topology
from caddy.raft.membership import ChangeKind
from caddy.raft.memory_storage import MemoryLogStorage
from caddy.raft.messages import VoteResponse
from caddy.replication.kv import KeyValueStore
from tests.actors.test_raft_actor_entries import RecordingTransport, acknowledge, put
from tests.harness import wait_until

SNAPSHOT_EVERY = 5


class Recorded:
    """The events a callback subscriber got, in order."""

    def __init__(self):
        self.events = []
        self._lock = threading.Lock()

    def __call__(self, event):
        with self._lock:
            self.events.append(event)

    def kinds(self):
        with self._lock:
            return [event.kind for event in self.events]

    def of(self, kind):
        with self._lock:
            return [event for event in self.events if event.kind == kind]


@pytest.fixture
def node(tmp_path):
    topology = local_cluster.write_topology(
        tmp_path,
        3,
        cluster="test",
        data_dir=str(tmp_path / "data"),
        raft={"pre_vote": False, "snapshot_threshold": SNAPSHOT_EVERY},
    )
    bus = EventBus("n1")
    recorded = Recorded()
    bus.subscribe(recorded)
    storage = MemoryLogStorage()
    actor = RaftActor(
        load_topology(topology),
        "n1",
        RecordingTransport(),
        KeyValueStore(),
        StatusBoard(),
        storage=storage,
        events=bus,
    )
    yield actor, recorded, storage
    actor.on_stop()
    bus.close()
    pykka.ActorRegistry.stop_all()


def elect(actor):
    actor.core.campaign()
    actor._process_ready()
    actor.core.step(VoteResponse(actor.core.term, "n2", True, False))
    actor._process_ready()
    acknowledge(actor, actor.core.last_index)


def test_winning_and_losing_leadership_are_told_in_order(node):
    actor, recorded, _ = node
    elect(actor)
    wait_until(lambda: recorded.of("leader.elected"), 10, "leader.elected")
    changes = [(e.term, e.leader, e.state) for e in recorded.of("leader.changed")]
    assert changes == [(1, None, "candidate"), (1, "n1", "leader")]
    assert [e.term for e in recorded.of("leader.elected")] == [1]
    actor.core.step(VoteResponse(actor.core.term + 1, "n2", False, False))  # a newer term
    actor._process_ready()
    lost = wait_until(lambda: recorded.of("leader.lost"), 10, "leader.lost")
    assert [(e.term, e.leader) for e in lost] == [(2, None)]
    assert recorded.of("leader.changed")[-1].state == "follower"
    seqs = [event.seq for event in recorded.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert actor._board.raft.state == "follower"  # posted before the event was published


def test_a_membership_change_is_told_once_it_is_in_force(node):
    actor, recorded, _ = node
    elect(actor)
    actor.core.change_membership(ChangeKind.ADD_LEARNER, "n4")
    actor._process_ready()
    changed = wait_until(lambda: recorded.of("membership.changed"), 10, "membership.changed")
    assert [(e.voters, e.learners, e.witnesses) for e in changed] == [
        (("n1", "n2", "n3"), ("n4",), ())
    ]
    actor._process_ready()  # nothing changed since: nothing more is told
    acknowledge(actor, actor.core.last_index)
    assert len(recorded.of("membership.changed")) == 1


def test_an_own_snapshot_is_told_once_written_and_the_memory_log_is_cut(node):
    actor, recorded, storage = node
    elect(actor)
    for seq in range(1, SNAPSHOT_EVERY + 2):
        actor.on_receive(put(seq, f"k{seq}", seq, seq))
        acknowledge(actor, actor.core.last_index)
    written = actor.actor_inbox.get(timeout=10).message  # the writer thread's report
    assert isinstance(written, SnapshotWritten) and written.error is None
    actor.on_receive(written)
    taken = wait_until(lambda: recorded.of("snapshot.taken"), 10, "snapshot.taken")
    assert taken[0].index == written.meta.index == actor.core.log.snapshot.index
    storage.sync()
    recovered = storage.load()
    assert recovered.snapshot == written.meta
    assert all(entry.index > written.meta.index for entry in recovered.entries)
