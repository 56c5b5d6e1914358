"""Values shared by the Raft core and the log storage: entries, hard state, snapshot metadata.

Both sides import these, so the storage can persist exactly what the core asks it to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class EntryKind(IntEnum):
    """What a log entry carries."""

    NOOP = 0  # appended by a new leader to commit entries of earlier terms
    COMMAND = 1  # an opaque state-machine command (bytes)
    CONFIG = 2  # a membership change (msgpack-encoded by the core)


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. `data` is opaque to storage."""

    index: int
    term: int
    kind: EntryKind = EntryKind.COMMAND
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What Raft must persist before answering: current term, vote in that term, commit index."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Membership:
    """The cluster configuration in force: who votes, who learns, who witnesses."""

    voters: frozenset[str] = field(default_factory=frozenset)
    learners: frozenset[str] = field(default_factory=frozenset)
    # Witnesses are disjoint from voters: they vote and count for quorum, never lead, never apply.
    witnesses: frozenset[str] = field(default_factory=frozenset)
    # (node, peer address) of members added at run time, whom a topology file may not list: so
    # every node can reach them, also one restarted with an older file. Where the members are,
    # not who they are: not compared.
    addresses: tuple[tuple[str, str], ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Identifies a snapshot: the last entry it covers and the membership at that entry."""

    index: int = 0
    term: int = 0
    membership: Membership = field(default_factory=Membership)
