"""What the Raft core hands its driver: a Ready batch of work, plus soft state and vote records.

The driver must carry out a Ready in the order documented on `Ready` and then call `advance`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from caddy.raft.membership import MemberRole
from caddy.raft.messages import AppendEntries, Heartbeat, InstallSnapshot, Message
from caddy.raft.read_index import ReadState
from caddy.raft.types import Entry, HardState, SnapshotMeta

# Leader replication messages: the only ones a driver may send before persisting (see Ready).
SEND_BEFORE_PERSIST: tuple[type, ...] = (AppendEntries, Heartbeat, InstallSnapshot)


class StateRole(Enum):
    """Where a node stands in the election cycle."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting: election role, known leader, term, membership role."""

    state: StateRole
    leader: str | None
    term: int
    member_role: MemberRole


@dataclass(frozen=True, slots=True)
class VoteRecord:
    """One vote decision, for audit: who asked, in which term, what we answered and why."""

    term: int
    candidate: str
    granted: bool
    pre_vote: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot received from the leader: persist it, then install it in the state machine."""

    meta: SnapshotMeta
    data: bytes


@dataclass(slots=True)
class Ready:
    """One batch of work. The driver MUST handle it in this order, then call `advance(ready)`:

    1. `snapshot`: `storage.save_snapshot(meta, data)`, then restore the state machine from it;
    2. `entries`: `storage.append(entries)`;
    3. `hard_state`: `storage.set_hard_state(hard_state)`;
    4. if `must_sync`: `storage.sync()`;
    5. only now send `messages`: votes and acknowledgements among them promise that 1-4 are
       durable, so sending earlier (or after a crash lost unsynced writes) breaks safety.
       One exception, as in etcd: the leader's replication messages (the types in
       `SEND_BEFORE_PERSIST`) may go out before steps 1-4, so that the followers' disks and
       the leader's work at once. That is safe because the core counts the leader's own
       entries towards commit only once `advance` reports them persisted, and a leader's term
       and vote were made durable before it could win (its RequestVotes waited for them);
    6. apply `committed_entries` in order (NOOP and CONFIG entries need no state machine work);
       serve `read_states` once the state machine applied their index;
    7. if `snapshot_request` is set, when convenient take a state machine snapshot at the
       applied index and call `compact(applied_index, data)`.

    Never call `ready()` again before `advance()` of the previous one.
    """

    hard_state: HardState | None
    entries: list[Entry]
    snapshot: Snapshot | None
    must_sync: bool
    messages: list[tuple[str, Message]]
    committed_entries: list[Entry]
    read_states: list[ReadState]
    soft_state: SoftState | None
    snapshot_request: int | None  # the applied index at which a snapshot is due
    commit_index: int  # the commit index when the batch was made
