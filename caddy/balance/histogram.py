"""A bounded latency histogram: log-spaced buckets (HdrHistogram's idea, much coarser), so a
backend's p50 and p99 cost the same few hundred bytes whatever its traffic."""

from __future__ import annotations

import math

LOWEST_MS = 0.01  # the first bucket holds everything up to this
GROWTH = 1.2  # each bucket's bound is this much above the one before: quantiles within 20 %
BUCKETS = 100  # the last bound is 0.01 ms * 1.2**99, about 690 s; above it, the last bucket


class LatencyHistogram:
    """Counts of latencies per bucket; `quantile` answers with a bucket's upper bound."""

    __slots__ = ("_counts", "count")

    def __init__(self) -> None:
        self._counts = [0] * BUCKETS
        self.count = 0

    def record(self, ms: float) -> None:
        self._counts[bucket_of(ms)] += 1
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """The latency (ms) that a fraction `q` of the recorded ones do not exceed, rounded up to
        its bucket's bound; None before anything was recorded."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, count in enumerate(self._counts):
            seen += count
            if seen >= rank:
                return upper_bound(index)
        return upper_bound(BUCKETS - 1)  # unreachable: the counts add up to `count`


def bucket_of(ms: float) -> int:
    if ms <= LOWEST_MS:
        return 0
    return min(BUCKETS - 1, math.ceil(math.log(ms / LOWEST_MS, GROWTH)))


def upper_bound(index: int) -> float:
    return LOWEST_MS * GROWTH**index
