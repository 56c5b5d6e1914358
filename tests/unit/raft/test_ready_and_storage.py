"""The Ready contract (what must be durable before which message) and the in-memory storage."""

from caddy.raft.memory_storage import MemoryLogStorage
from caddy.raft.messages import AppendEntries, AppendResponse
from caddy.raft.ready import StateRole
from caddy.raft.types import Entry, HardState, Membership, SnapshotMeta
from tests.unit.raft.cluster import Cluster


def test_an_acknowledgement_comes_in_the_ready_that_persists_what_it_acknowledges():
    cluster = Cluster()
    cluster.elect("a")
    follower = cluster.nodes["b"]
    follower.step(AppendEntries(follower.term, "a", 1, 1, (Entry(2, 1, data=b"x"),), 1))
    ready = follower.ready()
    acks = [m for _, m in ready.messages if isinstance(m, AppendResponse) and m.success]
    assert acks and acks[0].index == 2
    assert [e.index for e in ready.entries] == [2] and ready.must_sync


def test_advance_marks_entries_stable_and_ready_runs_dry():
    cluster = Cluster()
    leader = cluster.elect("a")
    leader.propose(b"x")
    ready = leader.ready()
    assert ready.entries
    assert leader.log.stable_index < leader.last_index
    leader.advance(ready)
    assert leader.log.stable_index == leader.last_index
    cluster.process("a")
    assert not leader.has_ready()


def test_a_commit_only_change_needs_no_sync():
    cluster = Cluster()
    cluster.elect("a")
    follower = cluster.nodes["b"]
    follower.step(AppendEntries(follower.term, "a", 1, 1, (Entry(2, 1),), 1))
    cluster.process("b")
    cluster.outbox = []
    follower.step(AppendEntries(follower.term, "a", 2, 1, (), 2))
    ready = follower.ready()
    assert ready.hard_state.commit == 2 and not ready.entries
    assert not ready.must_sync


def test_soft_state_reports_role_and_leader_changes_once():
    cluster = Cluster()
    cluster.elect("a")
    cluster.tick(5)
    changes = [r.soft_state for r in cluster.readies["a"] if r.soft_state is not None]
    assert [s.state for s in changes] == [
        StateRole.PRE_CANDIDATE,
        StateRole.CANDIDATE,
        StateRole.LEADER,
    ]
    assert changes[-1].leader == "a" and changes[-1].term == 1
    follower = [r.soft_state for r in cluster.readies["b"] if r.soft_state is not None]
    assert [(s.state, s.leader) for s in follower][-1] == (StateRole.FOLLOWER, "a")


def test_memory_storage_loses_exactly_the_unsynced_writes():
    storage = MemoryLogStorage()
    storage.append([Entry(1, 1), Entry(2, 1)])
    storage.set_hard_state(HardState(1, "a", 0))
    storage.sync()
    storage.append([Entry(3, 1)])
    storage.set_hard_state(HardState(2, "b", 2))
    assert storage.load().hard_state.term == 2
    storage.crash()
    state = storage.load()
    assert state.hard_state == HardState(1, "a", 0) and [e.index for e in state.entries] == [1, 2]
    storage.append([Entry(3, 1)])
    storage.set_hard_state(HardState(2, "b", 2))
    storage.crash(keep_unsynced=1)  # the OS flushed the first write on its own
    state = storage.load()
    assert state.hard_state.term == 1 and [e.index for e in state.entries] == [1, 2, 3]


def test_memory_storage_replaces_a_suffix_and_applies_snapshots_like_figure_13():
    storage = MemoryLogStorage()
    storage.append([Entry(i, 1) for i in range(1, 6)])
    storage.append([Entry(4, 2)])
    assert [(e.index, e.term) for e in storage.load().entries][-2:] == [(3, 1), (4, 2)]
    storage.save_snapshot(SnapshotMeta(2, 1, Membership()), b"s")  # matches: keep the rest
    assert [e.index for e in storage.load().entries] == [3, 4]
    storage.save_snapshot(SnapshotMeta(3, 7, Membership()), b"t")  # conflicts: drop all
    assert storage.load().entries == [] and storage.load().snapshot.index == 3
    storage.append([Entry(4, 7)])
    storage.compact(4)
    assert storage.load().entries == []
