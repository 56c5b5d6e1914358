"""FencingActor: this node's quorum view, kept by `caddy.quorum` and fed by the transport's
direct contact with each peer, gossip's departures and Raft's configuration changes. It
publishes `quorum.lost`, `quorum.regained`, `partition.detected` and `partition.healed` node
events and fills the `quorum` section of the status (CONTRACT 5)."""

from __future__ import annotations

import time
from typing import Any

import pykka

from actors.events import EventBus
from actors.ticker import Tick
from actors.transport import Transport
from caddy.config import ClusterConfig
from caddy.events import (
    MembershipChanged,
    MemberStateChanged,
    PartitionDetected,
    PartitionHealed,
    QuorumEvent,
    QuorumLost,
    QuorumRegained,
)
from caddy.quorum import QuorumRule, QuorumTracker, Reachability, contact_window_ms
from caddy.raft.types import Membership

_EVENTS: dict[str, type[QuorumEvent]] = {
    cls.kind: cls for cls in (QuorumLost, QuorumRegained, PartitionDetected, PartitionHealed)
}
EVENTS_TOLD = ("membership.changed", "member.state")  # what the actor subscribes to
EVALUATE_EVERY_MS = 50  # the view is judged this often (its Tick), well inside the window


class FencingActor(pykka.ThreadingActor):
    """Judges the quorum view on each Tick (every EVALUATE_EVERY_MS) and on a new
    configuration."""

    def __init__(
        self,
        config: ClusterConfig,
        node_id: str,
        transport: Transport,
        board: Any,
        events: EventBus,
    ) -> None:
        super().__init__()
        self._transport = transport
        self._events = events
        window_ms = contact_window_ms(
            config.raft.election_timeout_max_ms, config.transport.peer_heartbeat_ms
        )
        self._reach = Reachability(node_id, window_ms / 1000)
        rule = QuorumRule.of(config.membership)
        started = time.monotonic()
        for member in rule.members:  # a node starts believing its topology, for one window
            self._reach.heard_from(member, started)
        self._tracker = QuorumTracker(rule, time.time())
        self._section = self._tracker.state.to_status()  # replaced whole: read by other threads
        board.contribute("quorum", lambda: self._section)

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Tick):
            self._evaluate(self._tracker.rule)
        elif isinstance(message, MemberStateChanged):
            self._reach.gossip_state(message.member, message.state)
        elif isinstance(message, MembershipChanged):
            membership = Membership(
                frozenset(message.voters),
                frozenset(message.learners),
                frozenset(message.witnesses),
            )
            self._evaluate(QuorumRule.of(membership))

    def _evaluate(self, rule: QuorumRule) -> None:
        now = time.monotonic()
        for peer, stats in self._transport.peer_stats().items():
            if stats.last_heard_s is not None:
                self._reach.heard_from(peer, now - stats.last_heard_s)
        reachable = self._reach.reachable(rule.members, now)
        transitions = self._tracker.update(reachable, time.time(), rule)
        self._section = self._tracker.state.to_status()
        for change in transitions:
            self._events.publish(
                _EVENTS[change.kind], reachable=change.reachable, unreachable=change.unreachable
            )
