"""Lifeguard's local mechanisms: the health multiplier and the suspicion timer that shrinks.

A node missing its own deadlines probes more slowly; a suspicion many members confirm ends sooner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from caddy.swim.timings import SwimTimings


class Awareness:
    """Local health score 0..cap-1; probe interval and timeout are scaled by (score + 1)."""

    __slots__ = ("score", "_max_score")

    def __init__(self, multiplier_cap: int) -> None:
        self._max_score = max(0, multiplier_cap - 1)
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self._max_score)

    def scale(self, ticks: int) -> int:
        return ticks * (self.score + 1)


def suspicion_bounds(timings: SwimTimings, live_members: int) -> tuple[int, int]:
    """(min, max) suspicion timeout in ticks: min = mult * max(1, log10 n) * probe interval."""
    scale = max(1.0, math.log10(max(1, live_members)))
    minimum = math.ceil(timings.suspicion_mult * scale * timings.probe_interval_ticks)
    return minimum, timings.suspicion_max_timeout_mult * minimum


def suspicion_timeout(minimum: int, maximum: int, confirmations: int, expected: int) -> int:
    """memberlist's formula: max - (max - min) * log(c + 1) / log(k + 1), never below min."""
    if expected < 1:
        return minimum
    fraction = math.log(confirmations + 1) / math.log(expected + 1)
    return max(minimum, math.floor(maximum - (maximum - minimum) * fraction))


@dataclass(slots=True)
class Suspicion:
    """One member under suspicion: when it started, who confirmed it, when it turns into dead.

    `expected` is how many independent confirmations bring the timeout down to its minimum
    (0: the timeout is the minimum from the start, as in classic SWIM).
    """

    started: int
    minimum: int
    maximum: int
    expected: int
    origin: str
    confirmers: set[str] = field(default_factory=set)
    deadline: int = 0

    def __post_init__(self) -> None:
        self.confirmers.add(self.origin)
        self.deadline = self.started + suspicion_timeout(
            self.minimum, self.maximum, 0, self.expected
        )

    @property
    def confirmations(self) -> int:
        return len(self.confirmers) - 1

    def confirm(self, origin: str) -> bool:
        """Counts an independent confirmation; True when it was new and shortened the timer."""
        if self.expected < 1 or self.confirmations >= self.expected or origin in self.confirmers:
            return False
        self.confirmers.add(origin)
        timeout = suspicion_timeout(self.minimum, self.maximum, self.confirmations, self.expected)
        self.deadline = self.started + timeout
        return True
