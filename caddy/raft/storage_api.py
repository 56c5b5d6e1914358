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
        """Return what survived: the hard state, snapshot and the entries after the snapshot.

        After a crash between `write_snapshot` and a durable `cut_log_to_snapshot`, the log comes
        back fitted to the snapshot, as that cut would have left it.
        """
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
        The snapshot is durable on return, the cut at the next sync at the latest (the SQLite
        storage syncs both on return); a crash in between leaves the cut to `load`.
        """
        ...

    def write_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Replace the snapshot, durable on return; the log is left to `cut_log_to_snapshot`.

        It touches the snapshot only, so the node writes its own snapshots on another thread
        while the log is in use: concurrently with `append`, `set_hard_state`, `compact`,
        `cut_log_to_snapshot` and `sync`, never with `save_snapshot`, `load` or another
        `write_snapshot`. Until the cut, `append` goes on as before.
        """
        ...

    def cut_log_to_snapshot(self, meta: SnapshotMeta) -> None:
        """After `write_snapshot(meta, ...)`: cut the log to it as `save_snapshot` does.

        Entries <= meta.index go, and the ones after it too unless the log holds meta.index with
        meta.term. Durable at the next sync; a crash before that leaves the cut to `load`, which
        fits the log to the durable snapshot the same way. A snapshot no newer than the one the
        log was last cut to changes nothing: a newer one (a leader's) overtook it while it was
        being written.
        """
        ...

    def compact(self, through_index: int) -> None:
        """Drop entries <= through_index; a saved snapshot already covers them."""
        ...

    def sync(self) -> None:
        """Make every write above durable (one fsync covers many appends)."""
        ...

    def take_slowest_sync_s(self) -> float:
        """The longest `sync` since the last call, in seconds (0.0 if none)."""
        ...

    def close(self) -> None:
        """Sync and release the storage."""
        ...
