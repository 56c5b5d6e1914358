"""An in-memory LogStorage for simulations and tests, with a durable copy and pending writes.

`crash()` throws away what was not synced (optionally keeping a prefix of it, as an OS might).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from caddy.raft.storage_api import RecoveredState
from caddy.raft.types import Entry, HardState, SnapshotMeta


@dataclass(slots=True)
class _StoredState:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta | None = None
    snapshot_data: bytes | None = None
    entries: list[Entry] = field(default_factory=list)

    def copy(self) -> _StoredState:
        return _StoredState(self.hard_state, self.snapshot, self.snapshot_data, list(self.entries))

    def first_index(self) -> int:
        return (self.snapshot.index if self.snapshot else 0) + 1

    def append(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        if first < self.first_index():
            raise ValueError(f"entry {first} is already covered by the snapshot")
        offset = first - self.first_index()
        if offset > len(self.entries):
            raise ValueError(f"entry {first} would leave a gap in the log")
        del self.entries[offset:]
        self.entries.extend(entries)

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        offset = meta.index - self.first_index()
        continues = 0 <= offset < len(self.entries) and self.entries[offset].term == meta.term
        self.entries = self.entries[offset + 1 :] if continues else []
        self.snapshot, self.snapshot_data = meta, data

    def compact(self, through_index: int) -> None:
        del self.entries[: max(0, through_index - self.first_index() + 1)]


class MemoryLogStorage:
    """LogStorage in memory. Writes are pending until `sync()`; `crash()` loses pending writes."""

    def __init__(self) -> None:
        self._durable = _StoredState()
        self._current = _StoredState()
        self._pending: list[tuple[str, tuple]] = []  # writes since the last sync, in order
        self.sync_count = 0

    def load(self) -> RecoveredState:
        state = self._current
        return RecoveredState(
            state.hard_state, state.snapshot, state.snapshot_data, list(state.entries)
        )

    def append(self, entries: Sequence[Entry]) -> None:
        if entries:
            entries = list(entries)
            self._current.append(entries)
            self._pending.append(("append", (entries,)))

    def set_hard_state(self, state: HardState) -> None:
        self._current.hard_state = state
        self._pending.append(("hard_state", (state,)))

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self._current.save_snapshot(meta, data)
        self._pending.append(("save_snapshot", (meta, data)))

    def compact(self, through_index: int) -> None:
        self._current.compact(through_index)
        self._pending.append(("compact", (through_index,)))

    def sync(self) -> None:
        self._replay(len(self._pending))
        self.sync_count += 1

    def close(self) -> None:
        self.sync()

    def crash(self, keep_unsynced: int = 0) -> None:
        """Lose every write since the last sync except the first `keep_unsynced` of them."""
        self._replay(min(keep_unsynced, len(self._pending)))
        self._pending = []
        self._current = self._durable.copy()

    @property
    def unsynced_writes(self) -> int:
        return len(self._pending)

    def stored_term(self, index: int) -> int | None:
        """The term of the stored (maybe unsynced) entry at `index`, if there is one."""
        state = self._current
        offset = index - state.first_index()
        return state.entries[offset].term if 0 <= offset < len(state.entries) else None

    def durably_holds(self, index: int, term: int) -> bool:
        """Whether a crash right now would keep entry (index, term), itself or in the snapshot."""
        state = self._durable
        if state.snapshot is not None and state.snapshot.index >= index:
            return True
        offset = index - state.first_index()
        return 0 <= offset < len(state.entries) and state.entries[offset].term == term

    def durable_state(self) -> RecoveredState:
        """What a crash right now would leave (for invariant checks)."""
        state = self._durable
        return RecoveredState(
            state.hard_state, state.snapshot, state.snapshot_data, list(state.entries)
        )

    def _replay(self, count: int) -> None:
        durable = self._durable
        for operation, arguments in self._pending[:count]:
            if operation == "hard_state":
                durable.hard_state = arguments[0]
            else:
                getattr(durable, operation)(*arguments)
        del self._pending[:count]
