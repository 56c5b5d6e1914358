"""Rate-limited logging of dropped inbound frames: one line per (peer, reason) per interval.

A flood of bad frames must not become a flood of log lines, nor grow memory with forged names.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_INTERVAL_S = 10.0
# Keys are (a known peer or None, a reason from the code): the transport never hands in a name
# it has not checked against the topology. The bound is for callers that would: past it, every
# new key shares one line.
MAX_KEYS = 512
MAX_DETAIL_CHARS = 200
_OVERFLOW = ("*", "other")
UNKNOWN_PEER = "-"  # the peer column of a line for a client or an unknown sender


@dataclass(slots=True)
class _Window:
    next_line_at: float  # no line for this key before then
    suppressed: int = 0  # drops since the last line


class DropLog:
    """Decides which drops get a log line: the first of a (peer, reason) pair at once, then at
    most one per `interval_s`, saying how many were dropped in between without a line.

    Thread-safe (the I/O thread, the Raft actor's reader and the gossip actor all drop frames);
    the line is written outside the lock. Memory: one small record per key, at most MAX_KEYS.
    """

    def __init__(
        self,
        node_id: str,
        logger: logging.Logger,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        level: int = logging.INFO,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._node_id = node_id
        self._logger = logger
        self._interval_s = interval_s
        self._level = level
        self._max_keys = max_keys
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._evicted_at = -float("inf")
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._windows)

    def note(self, peer: str | None, reason: str, detail: str = "", count: int = 1) -> bool:
        """`count` frames from `peer` (None: a client or unknown sender) were dropped for
        `reason`; `detail` says why (bounded before it is logged). True when a line was written."""
        if not self._logger.isEnabledFor(self._level):
            return False
        key = (peer or UNKNOWN_PEER, reason)
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None and len(self._windows) >= self._max_keys:
                if now - self._evicted_at >= self._interval_s:  # a full look, once a while
                    self._evicted_at = now
                    self._evict_idle(now)
                if len(self._windows) >= self._max_keys:
                    key = _OVERFLOW
                    window = self._windows.get(key)
            if window is None:
                self._windows[key] = _Window(now + self._interval_s)
                suppressed = 0
            elif now < window.next_line_at:
                window.suppressed += count
                return False
            else:
                suppressed, window.suppressed = window.suppressed, 0
                window.next_line_at = now + self._interval_s
        peer_name, reason_name = key
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[:MAX_DETAIL_CHARS] + "..."
        self._logger.log(
            self._level,
            "node %s: dropped %d frame(s) from %s (%s)%s%s",
            self._node_id,
            count,
            peer_name,
            reason_name,
            f": {detail}" if detail else "",
            f"; {suppressed} more since the last such line" if suppressed else "",
        )
        return True

    def _evict_idle(self, now: float) -> None:
        """Forget keys whose interval is over with nothing suppressed: their next drop would get
        a line at once anyway, so forgetting them changes no line."""
        idle = [
            key
            for key, window in self._windows.items()
            if window.suppressed == 0 and now >= window.next_line_at
        ]
        for key in idle:
            del self._windows[key]
