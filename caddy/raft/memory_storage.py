"""An in-memory LogStorage for simulations and tests, with a durable copy and pending writes.

`crash()` throws away what was not synced (optionally keeping a prefix of it, as an OS might).
The snapshot is kept apart from the log, as the SQLite storage keeps it in its own file: writing
it is durable at once, while the log's cut to it is a pending write like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from caddy.raft.storage_api import RecoveredState
from caddy.raft.types import Entry, HardState, SnapshotMeta


@dataclass(slots=True)
class _StoredState:
    """One copy of what is stored. `snapshot` is the snapshot file; `log_base_index` and
    `log_base_term` name the snapshot the log was last cut to (SQLite's applied_snapshot), which
    the file runs ahead of between `write_snapshot` and the cut."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta | None = None
    snapshot_data: bytes | None = None
    log_base_index: int = 0
    log_base_term: int = 0
    entries: list[Entry] = field(default_factory=list)  # contiguous, after log_base_index

    def copy(self) -> _StoredState:
        return replace(self, entries=list(self.entries))

    def _position(self, index: int) -> int:
        """How many stored entries come before `index` (entries may start after the base, once
        compacted)."""
        if not self.entries:
            return 0
        return min(max(0, index - self.entries[0].index), len(self.entries))

    def term_at(self, index: int) -> int | None:
        position = self._position(index)
        if position < len(self.entries) and self.entries[position].index == index:
            return self.entries[position].term
        return None

    def append(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        if first <= self.log_base_index:
            raise ValueError(f"entry {first} is already covered by snapshot {self.log_base_index}")
        last = self.entries[-1].index if self.entries else self.log_base_index
        if first > last + 1:
            raise ValueError(f"entry {first} would leave a gap in the log")
        del self.entries[self._position(first) :]
        self.entries.extend(entries)

    def fit_log(self, meta: SnapshotMeta) -> None:
        """Raft Figure 13 steps 6-7, as SQLite's `_fit_log_to_snapshot`: keep what follows the
        snapshot only where the log holds meta.index with meta.term."""
        if self.term_at(meta.index) == meta.term:
            del self.entries[: self._position(meta.index + 1)]
        else:
            self.entries = []
        self.log_base_index, self.log_base_term = meta.index, meta.term

    def compact(self, through_index: int) -> None:
        del self.entries[: self._position(through_index + 1)]

    def fitted(self) -> _StoredState:
        """This state as a start finds it: a log the snapshot file ran ahead of (a crash came
        before the cut was durable) fitted to the file, as SQLite's open does. Not a copy when
        the log fits already."""
        snapshot = self.snapshot
        if snapshot is None or (snapshot.index, snapshot.term) == (
            self.log_base_index,
            self.log_base_term,
        ):
            return self
        state = self.copy()
        state.fit_log(snapshot)
        return state

    def recovered(self) -> RecoveredState:
        return RecoveredState(
            self.hard_state, self.snapshot, self.snapshot_data, list(self.entries)
        )


class MemoryLogStorage:
    """LogStorage in memory. Writes are pending until `sync()`; `crash()` loses pending writes.

    One thread drives it: the simulator runs snapshot writes as steps of its own.
    """

    def __init__(self) -> None:
        self._durable = _StoredState()
        self._current = _StoredState()
        self._pending: list[tuple[str, tuple]] = []  # writes since the last sync, in order
        self.sync_count = 0

    def load(self) -> RecoveredState:
        """What is stored (synced or not), its log fitted to the snapshot: never an entry that
        the snapshot returned covers."""
        return self._current.fitted().recovered()

    def append(self, entries: Sequence[Entry]) -> None:
        if entries:
            entries = list(entries)
            self._current.append(entries)
            self._pending.append(("append", (entries,)))

    def set_hard_state(self, state: HardState) -> None:
        self._current.hard_state = state
        self._pending.append(("hard_state", (state,)))

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """The snapshot is durable at once, as SQLite's; only the cut waits for the sync (a crash
        before it leaves the cut to the next start), so a later `write_snapshot` is never
        replaced by this older one."""
        self.write_snapshot(meta, data)
        self._cut_log(meta)

    def write_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Replace the snapshot file, durable at once, and leave the log alone."""
        for state in (self._durable, self._current):
            state.snapshot, state.snapshot_data = meta, data

    def cut_log_to_snapshot(self, meta: SnapshotMeta) -> None:
        """Cut the log to a written snapshot at the next sync, unless a newer one overtook it."""
        if meta.index > self._current.log_base_index:
            self._cut_log(meta)

    def _cut_log(self, meta: SnapshotMeta) -> None:
        self._current.fit_log(meta)
        self._pending.append(("fit_log", (meta,)))

    def compact(self, through_index: int) -> None:
        self._current.compact(through_index)
        self._pending.append(("compact", (through_index,)))

    def sync(self) -> None:
        self._replay(len(self._pending))
        self.sync_count += 1

    def take_slowest_sync_s(self) -> float:
        return 0.0  # memory has no disk to stall

    def close(self) -> None:
        self.sync()

    def crash(self, keep_unsynced: int = 0) -> None:
        """Lose every write since the last sync except the first `keep_unsynced` of them; then
        cut the log to a snapshot whose cut was lost, as the next start does (durably)."""
        self._replay(min(keep_unsynced, len(self._pending)))
        self._pending = []
        self._durable = self._durable.fitted()
        self._current = self._durable.copy()

    @property
    def unsynced_writes(self) -> int:
        return len(self._pending)

    def stored_term(self, index: int) -> int | None:
        """The term of the stored (maybe unsynced) entry at `index`, if there is one."""
        return self._current.term_at(index)

    def durably_holds(self, index: int, term: int) -> bool:
        """Whether a crash right now would keep entry (index, term), itself or in the snapshot
        (which holds only committed entries: a committed one it covers is kept)."""
        state = self._durable.fitted()
        if state.snapshot is not None and state.snapshot.index >= index:
            return True
        return state.term_at(index) == term

    def durable_state(self) -> RecoveredState:
        """What a crash right now would leave (for invariant checks)."""
        return self._durable.fitted().recovered()

    def _replay(self, count: int) -> None:
        durable = self._durable
        for operation, arguments in self._pending[:count]:
            if operation == "hard_state":
                durable.hard_state = arguments[0]
            else:
                getattr(durable, operation)(*arguments)
        del self._pending[:count]
