"""What a leader knows about one follower's log, and how fast it may send to it.

Probe: one AppendEntries at a time until a match is found. Replicate: pipelined sends bounded by an
in-flight window. Snapshot: the follower is behind the compacted log and receives the snapshot.
"""

from __future__ import annotations

from collections import deque
from enum import Enum


class ProgressState(Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    """Replication state of one follower, kept by the leader."""

    __slots__ = (
        "match",
        "next",
        "state",
        "probe_sent",
        "inflight",
        "max_inflight",
        "recent_active",
        "pending_snapshot",
        "snapshot_offset",
        "commit_sent",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False  # in PROBE: an AppendEntries is out, wait for its answer
        self.inflight: deque[int] = deque()  # last index of each AppendEntries in flight
        self.max_inflight = max_inflight
        self.recent_active = False  # heard from within the current CheckQuorum period
        self.pending_snapshot = 0  # index of the snapshot being sent
        self.snapshot_offset = 0  # next byte of it to send
        self.commit_sent = 0  # the highest commit index an append or heartbeat told it

    def is_paused(self) -> bool:
        """Whether the leader must hold back further AppendEntries."""
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        return True

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = 0
        self.snapshot_offset = 0

    def sent_entries(self, last_index: int) -> None:
        """Account for an AppendEntries carrying entries up to `last_index`."""
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def update_match(self, index: int) -> bool:
        """The follower holds our log through `index`; returns whether the match moved."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        if self.next <= index:
            self.next = index + 1
        inflight = self.inflight
        while inflight and inflight[0] <= index:
            inflight.popleft()
        return updated
