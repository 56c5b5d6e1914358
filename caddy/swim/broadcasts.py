"""The queue of membership updates waiting to be piggybacked, each sent a bounded number of times.

Least-transmitted updates go first; a newer update about a member replaces the older one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from caddy.swim.messages import Update, update_size

_LIST_HEADER_BYTES = 3  # msgpack array header of up to 65535 items


def retransmit_limit(retransmit_mult: int, members: int) -> int:
    """lambda * ceil(log10(n + 1)): enough sends for an update to reach everyone w.h.p."""
    return retransmit_mult * math.ceil(math.log10(members + 1))


@dataclass(slots=True)
class _Queued:
    update: Update
    size: int
    serial: int
    transmits: int = 0


class BroadcastQueue:
    """Pending updates keyed by member; `take` picks what fits a message's byte budget."""

    __slots__ = ("_pending", "_serial")

    def __init__(self) -> None:
        self._pending: dict[str, _Queued] = {}
        self._serial = 0

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, update: Update) -> None:
        self._serial += 1
        self._pending[update.member] = _Queued(update, update_size(update), self._serial)

    def take(self, budget_bytes: int, limit: int, skip_member: str | None = None) -> list[Update]:
        """Updates fitting `budget_bytes`, fewest transmissions first, newest first among equals.

        Each taken update counts one transmission and is dropped after `limit` of them.
        """
        if not self._pending:
            return []
        budget = budget_bytes - _LIST_HEADER_BYTES
        taken: list[Update] = []
        for queued in sorted(self._pending.values(), key=lambda q: (q.transmits, -q.serial)):
            if queued.size > budget or queued.update.member == skip_member:
                continue
            budget -= queued.size
            taken.append(queued.update)
            queued.transmits += 1
            if queued.transmits >= limit:
                del self._pending[queued.update.member]
            if budget <= 0:
                break
        return taken
