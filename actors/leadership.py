"""Leader-only work (CONTRACT 5, `ClusterManager.on_leadership`): the user's callback runs on a
thread of its own each time this node becomes leader, with a fencing token, and is told when
the leadership ends.

The token is the Raft term: each leadership has a term above every earlier one (a term has at
most one leader), so a resource that keeps the highest token it saw (`caddy.fencing`) refuses a
deposed leader that still acts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from caddy.events import LeaderElected, LeaderLost, NodeEvent, NodeStopping

log = logging.getLogger(__name__)

EVENT_KINDS = (LeaderElected.kind, LeaderLost.kind, NodeStopping.kind)


class LeadershipToken(int):
    """The fencing token of one leadership (its term), and `lost`: set once it ended (this node
    stepped down or is stopping). Long-running leader work checks `lost` or waits on it."""

    lost: threading.Event

    def __new__(cls, term: int) -> LeadershipToken:
        token = super().__new__(cls, term)
        token.lost = threading.Event()
        return token


class LeadershipRunner:
    """Turns leader events into runs of `callback(token)` and the `lost` of their tokens. Told
    events on the bus's callback thread; never blocks it, and a callback that raises is logged
    and does not touch the node."""

    def __init__(self, node_id: str, callback: Callable[[LeadershipToken], Any]) -> None:
        self._node_id = node_id
        self._callback = callback
        self._current: LeadershipToken | None = None

    def __call__(self, event: NodeEvent) -> None:
        if isinstance(event, LeaderElected):
            self._end()
            token = self._current = LeadershipToken(event.term)
            threading.Thread(
                target=self._run, args=(token,), name=f"caddy-leader-{self._node_id}", daemon=True
            ).start()
        else:  # leadership lost, or the node stops
            self._end()

    def _end(self) -> None:
        if self._current is not None:
            self._current.lost.set()
            self._current = None

    def _run(self, token: LeadershipToken) -> None:
        try:
            self._callback(token)
        except Exception:
            log.exception("node %s: leadership callback raised (term %d)", self._node_id, token)
