"""One drain of a node (SIGTERM, `caddy-ctl drain`): it takes no new client requests (the Raft
actor redirects them), a leader hands leadership to its most caught-up voter, and the requests
in flight finish, all within the drain timeout. Stepped by the FailoverActor's ticks; the node
stays draining until undrained or stopped."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pykka

from actors.status_board import StatusBoard

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 5.0


class Drain:
    """`step()` on every tick until it returns True (finished); `finished` is then set."""

    def __init__(
        self,
        node_id: str,
        reason: str,
        timeout_s: float,
        raft: pykka.ActorProxy,
        board: StatusBoard,
        transfer_timeout_s: float,
    ) -> None:
        self._node_id = node_id
        self._raft = raft
        self._board = board
        self._transfer_timeout_s = transfer_timeout_s
        self.reason = reason
        self.started = time.monotonic()
        self.started_at = time.time()
        self.deadline = self.started + timeout_s
        self.finished = threading.Event()
        self.moved_to: str | None = None
        self.in_flight = 0
        self.timed_out = False
        self._handing_over_since: float | None = None
        self._no_successor = False  # the leader found no voter to hand over to
        raft.set_draining(True).get(timeout=ASK_TIMEOUT_S)

    def step(self) -> bool:
        if self.finished.is_set():
            return True
        now = time.monotonic()
        raft = self._board.raft
        if raft is None:
            return self._finish(0, timed_out=False)
        leading = raft.state == "leader"
        if leading and (
            self._handing_over_since is None
            or now - self._handing_over_since > self._transfer_timeout_s
        ):
            self._hand_over(now)
        if leading and self._no_successor and raft.pending_writes == 0:
            log.info("node %s: no voter to hand leadership to", self._node_id)
            return self._finish(0, timed_out=False)  # a lone voter: its requests are done
        if not leading and raft.pending_writes == 0:
            if self._handing_over_since is None:
                return self._finish(0, timed_out=False)  # it did not lead: nothing to hand over
            if raft.leader is not None:
                self.moved_to = raft.leader
                log.info("node %s: leadership moved to %s", self._node_id, raft.leader)
                return self._finish(0, timed_out=False)
            if now - self._handing_over_since > self._transfer_timeout_s:
                return self._finish(0, timed_out=False)  # no successor known yet: leave anyway
        if now >= self.deadline:
            log.warning("node %s: drain timeout passed", self._node_id)
            return self._finish(raft.pending_writes, timed_out=True)
        return False

    def _hand_over(self, now: float) -> None:
        try:
            target = self._raft.hand_over_leadership().get(timeout=ASK_TIMEOUT_S)
        except Exception as error:  # the drain goes on; the deadline bounds it
            log.warning("node %s: leadership hand-over failed: %s", self._node_id, error)
            target = None
        else:
            self._no_successor = target is None
        self._handing_over_since = now
        if target is not None:
            log.info("node %s: handing leadership over to %s", self._node_id, target)

    def _finish(self, in_flight: int, *, timed_out: bool) -> bool:
        self.in_flight, self.timed_out = in_flight, timed_out
        self.finished.set()
        return True

    def status(self) -> dict[str, Any]:
        return {
            "state": "drained" if self.finished.is_set() else "draining",
            "reason": self.reason,
            "started": self.started_at,
            "leadership_moved_to": self.moved_to,
            "in_flight": self.in_flight,
            "timed_out": self.timed_out,
        }
