"""Linearizable reads: ReadIndex requests waiting for a quorum round that confirms leadership.

Every heartbeat broadcast opens a numbered round; a read waits for the first round started after it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from caddy.raft.membership import quorum_index


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read may be served once the state machine has applied `index`."""

    context: bytes
    index: int


class ReadIndexTracker:
    """Numbered confirmation rounds, each follower's latest acknowledged round, waiting reads."""

    __slots__ = ("round", "_round_ticks", "_acked", "_waiting")

    def __init__(self) -> None:
        self.round = 0
        self._round_ticks: dict[int, int] = {}  # round -> tick it started (for leases)
        self._acked: dict[str, int] = {}
        self._waiting: deque[tuple[int, bytes, int]] = deque()  # (round, context, index)

    def start_round(self, now: int | None) -> int:
        """Open the next round; `now` (for leases) is kept until a later round is confirmed."""
        self.round += 1
        if now is not None:
            self._round_ticks[self.round] = now
        return self.round

    def add_read(self, round_number: int, context: bytes, index: int) -> None:
        self._waiting.append((round_number, context, index))

    def acknowledge(self, peer: str, round_number: int) -> None:
        if round_number > self._acked.get(peer, 0):
            self._acked[peer] = round_number

    def confirmed_round(self, voting: Iterable[str], self_id: str) -> int:
        """The latest round a quorum of the voting set has acknowledged (the leader counts)."""
        rounds = [
            self.round if member == self_id else self._acked.get(member, 0) for member in voting
        ]
        return quorum_index(rounds)

    def round_started_at(self, round_number: int) -> int | None:
        return self._round_ticks.get(round_number)

    def release(self, confirmed: int) -> list[ReadState]:
        """Reads whose round is confirmed, in request order; forgets older round ticks."""
        released = []
        while self._waiting and self._waiting[0][0] <= confirmed:
            _, context, index = self._waiting.popleft()
            released.append(ReadState(context, index))
        for old in [number for number in self._round_ticks if number < confirmed]:
            del self._round_ticks[old]
        return released
