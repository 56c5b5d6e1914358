"""The messages Raft peers exchange, as frozen values.

Every message carries the sender's `term` and id (`sender`); `codec.py` maps them to wire dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from caddy.raft.types import Entry, SnapshotMeta


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Leader -> follower: entries after (prev_index, prev_term), and the leader's commit index."""

    kind: ClassVar[str] = "raft.append"
    term: int
    sender: str
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendResponse:
    """Follower -> leader. On success `index` is the last index known to match the leader's log.

    On rejection `index` is the rejected prev_index and the hints say where the follower's log
    differs: `conflict_term` (0 when the log is too short) and the first index of that term
    (or the follower's last index + 1).
    """

    kind: ClassVar[str] = "raft.append_response"
    term: int
    sender: str
    success: bool
    index: int
    conflict_index: int
    conflict_term: int


@dataclass(frozen=True, slots=True)
class RequestVote:
    """Candidate -> voters. `pre_vote` asks whether a vote would be granted at `term`."""

    kind: ClassVar[str] = "raft.vote"
    term: int
    sender: str
    last_index: int
    last_term: int
    pre_vote: bool
    transfer: bool  # leadership transfer: voters answer even while they trust a current leader


@dataclass(frozen=True, slots=True)
class VoteResponse:
    """Voter -> candidate."""

    kind: ClassVar[str] = "raft.vote_response"
    term: int
    sender: str
    granted: bool
    pre_vote: bool


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader -> follower: keeps leadership and carries a ReadIndex confirmation round.

    `commit` never exceeds what the follower is known to hold.
    """

    kind: ClassVar[str] = "raft.heartbeat"
    term: int
    sender: str
    commit: int
    round: int


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    """Follower -> leader: acknowledges leadership up to confirmation `round`."""

    kind: ClassVar[str] = "raft.heartbeat_response"
    term: int
    sender: str
    round: int


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Leader -> follower: one chunk of snapshot `meta` at byte `offset`; `done` on the last."""

    kind: ClassVar[str] = "raft.snapshot"
    term: int
    sender: str
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    """Follower -> leader: the byte offset it expects next for snapshot `snapshot_index`.

    Once the whole snapshot is installed the follower answers with an AppendResponse instead.
    """

    kind: ClassVar[str] = "raft.snapshot_response"
    term: int
    sender: str
    snapshot_index: int
    next_offset: int


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leader -> transfer target: campaign now, without waiting for an election timeout."""

    kind: ClassVar[str] = "raft.timeout_now"
    term: int
    sender: str


Message = (
    AppendEntries
    | AppendResponse
    | RequestVote
    | VoteResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | SnapshotResponse
    | TimeoutNow
)

MESSAGE_TYPES: tuple[type, ...] = (
    AppendEntries,
    AppendResponse,
    RequestVote,
    VoteResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    SnapshotResponse,
    TimeoutNow,
)
