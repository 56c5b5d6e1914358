"""The storage interface the Raft core's driver writes to, and what it reads back on restart.

Both the durable SQLite storage and the simulator's in-memory storage implement `LogStorage`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from caddy.raft.types import Entry, HardState, SnapshotMeta


@dataclass(frozen=True, slots=True)
class RecoveredState:
    """Everything durable, as `load` finds it: hard state, latest snapshot, entries after it."""

    hard_state: HardState
    snapshot: SnapshotMeta | None
    snapshot_data: bytes | None
    entries: list[Entry]


class LogStorage(Protocol):
    """Durable term, vote, commit index, log entries and the latest snapshot of one node."""

    def load(self) -> RecoveredState:
        """Return what survived: the hard state, snapshot and the entries after the snapshot."""
        ...

    def append(self, entries: Sequence[Entry]) -> None:
        """Store contiguous entries; from an index already stored on, the suffix is replaced."""
        ...

    def set_hard_state(self, state: HardState) -> None:
        """Record term, vote and commit index."""
        ...

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Replace the snapshot and drop the entries it covers (index <= meta.index).

        When the stored entry at meta.index does not have meta.term (or is not stored), the
        entries after it belong to a log the snapshot replaces and are dropped too (Raft paper
        Figure 13, steps 6-7): a follower installing a leader's snapshot discards its whole log.
        """
        ...

    def compact(self, through_index: int) -> None:
        """Drop entries <= through_index; a saved snapshot already covers them."""
        ...

    def sync(self) -> None:
        """Make every write above durable (one fsync covers many appends)."""
        ...

    def close(self) -> None:
        """Sync and release the storage."""
        ...
