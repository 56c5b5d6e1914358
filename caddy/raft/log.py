"""The in-memory view of one node's Raft log: snapshot base, entries, stable/commit/applied marks.

It tracks what is persisted (`stable_index`) so the node can hand out exactly what to write.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from caddy.raft.errors import CommittedEntryConflict
from caddy.raft.types import Entry, SnapshotMeta


def _term_of(entry: Entry) -> int:
    return entry.term


class RaftLog:
    """Entries after `snapshot.index`; terms never decrease along the log, so lookups bisect."""

    __slots__ = ("snapshot", "entries", "stable_index", "commit", "applied", "pending_snapshot")

    def __init__(self, snapshot: SnapshotMeta, entries: list[Entry], commit: int) -> None:
        self.snapshot = snapshot
        self.entries = entries
        self.stable_index = self.last_index()  # everything loaded came from storage
        self.commit = commit
        self.applied = snapshot.index
        # A snapshot received from the leader that the driver has not persisted yet.
        self.pending_snapshot: tuple[SnapshotMeta, bytes] | None = None

    def first_index(self) -> int:
        return self.snapshot.index + 1

    def last_index(self) -> int:
        return self.snapshot.index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot.term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`; None when it is compacted away or beyond the end."""
        offset = index - self.snapshot.index
        if offset == 0:
            return self.snapshot.term
        if 0 < offset <= len(self.entries):
            return self.entries[offset - 1].term
        return None

    def entry_at(self, index: int) -> Entry:
        return self.entries[index - self.snapshot.index - 1]

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at (last_index, last_term) is at least as complete as this one."""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def slice(self, start: int, max_count: int, max_bytes: int) -> list[Entry]:
        """Entries from `start` on, at most `max_count` and `max_bytes` (but at least one)."""
        offset = start - self.snapshot.index - 1
        batch = self.entries[offset : offset + max_count]
        if len(batch) > 1 and sum(len(entry.data) for entry in batch) > max_bytes:
            size = 0
            for position, entry in enumerate(batch):
                size += len(entry.data)
                if size > max_bytes:
                    return batch[: max(position, 1)]
        return batch

    def last_index_of_term(self, term: int) -> int | None:
        """The last index holding `term`, when the retained log has one."""
        position = bisect_right(self.entries, term, key=_term_of)
        if position and self.entries[position - 1].term == term:
            return self.snapshot.index + position
        return None

    def first_index_of_term(self, term: int) -> int:
        """The first retained index holding `term` (the first index if it began earlier)."""
        return self.snapshot.index + 1 + bisect_left(self.entries, term, key=_term_of)

    def append(self, entries: Sequence[Entry]) -> None:
        """Add entries after the last one (the leader's own proposals)."""
        self.entries.extend(entries)

    def merge(self, prev_index: int, entries: Sequence[Entry]) -> int | None:
        """Take a leader's entries that follow `prev_index` (which matches).

        Only a real term conflict truncates: entries already held are kept, so a delayed or
        duplicated AppendEntries never shortens the log. Returns the index where the log was
        truncated, or None; raises CommittedEntryConflict (changing nothing) rather than
        truncate a committed entry.
        """
        if not entries:
            return None
        last_new = entries[-1]
        if self.term_at(last_new.index) == last_new.term:
            return None  # log matching: everything up to it is already here
        last_index = self.last_index()
        start = 0
        if entries[0].index <= last_index:
            # Find the first entry whose term differs from ours (or that we lack).
            start = next(
                (
                    position
                    for position, entry in enumerate(entries)
                    if self.term_at(entry.index) != entry.term
                ),
                len(entries),
            )
            if start == len(entries):
                return None
        first_new = entries[start].index
        truncated_at = None
        if first_new <= last_index:
            if first_new <= self.commit:
                raise CommittedEntryConflict(f"entry {first_new} contradicts a committed entry")
            del self.entries[first_new - self.snapshot.index - 1 :]
            self.stable_index = min(self.stable_index, first_new - 1)
            truncated_at = first_new
        self.entries.extend(entries[start:])
        return truncated_at

    def unstable_entries(self) -> list[Entry]:
        """Entries the driver has not persisted yet."""
        return self.entries[self.stable_index - self.snapshot.index :]

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries through (index, term); ignore if since replaced."""
        if self.term_at(index) == term and index > self.stable_index:
            self.stable_index = index

    def commit_to(self, index: int) -> bool:
        """Raise the commit index (never lowers it); returns whether it moved."""
        if index > self.commit:
            self.commit = index
            return True
        return False

    def committed_unapplied(self) -> list[Entry]:
        """Committed entries after the applied index, for the state machine."""
        start = max(self.applied, self.snapshot.index) - self.snapshot.index
        return self.entries[start : self.commit - self.snapshot.index]

    def compact(self, meta: SnapshotMeta) -> None:
        """Drop entries the snapshot `meta` covers (meta.index is in this log)."""
        del self.entries[: meta.index - self.snapshot.index]
        self.snapshot = meta

    def restore(self, meta: SnapshotMeta, data: bytes) -> None:
        """Replace the whole log with a leader's snapshot; the driver must persist it first."""
        self.entries = []
        self.snapshot = meta
        self.stable_index = meta.index
        self.commit = max(self.commit, meta.index)
        self.pending_snapshot = (meta, data)
