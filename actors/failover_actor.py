"""FailoverActor: judges every member's health each `health_check_interval_ms` and, on the
leader, carries out what the policy (`caddy.failover`) decides, through Raft.

Each node runs its own checks (the topology's, and callables given in code) off this thread and
gossips its verdict as the `health` metadata key; it judges each peer by direct contact (the
transport's links), gossip's state and the peer's own verdict, all through `HealthHistory`'s
hysteresis. Followers only report; the leader moves leadership off itself when unhealthy,
replaces a failed voter by a caught-up learner and removes it. Every action, and every change
of a member's health, is a node event; the `failover` status section shows the verdicts, the
last action and what the policy waits for (CONTRACT 6).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pykka

from actors.drain import Drain
from actors.events import EventBus, Subscription
from actors.health_checks import HealthCheckRunner, RoundResult, UserCheck
from actors.hooks import HookRunner
from actors.status_board import StatusBoard
from actors.ticker import Tick
from actors.transport import Inbound, Transport
from caddy.config import ClusterConfig
from caddy.events import (
    DrainFinished,
    DrainStarted,
    LeaderChanged,
    LeaderElected,
    LeaderLost,
    LeadershipMoved,
    LearnerPromoted,
    MemberFailed,
    MemberRecovered,
    MembershipChanged,
    MemberStateChanged,
    MemberSuspect,
    QuorumLost,
    QuorumRegained,
    VoterRemoved,
)
from caddy.failover import (
    Action,
    ClusterView,
    Decision,
    Health,
    HealthHistory,
    PolicySettings,
    PromoteLearner,
    RemoveVoter,
    TransferLeadership,
    decide,
)
from caddy.quorum import contact_window_ms
from caddy.raft.types import Membership
from caddy.reconfig import plan_request
from caddy.replication.replies import (
    ERROR_KIND,
    OK_KIND,
    REDIRECT_KIND,
    error_body,
    ok_body,
    redirect_body,
)

log = logging.getLogger(__name__)

EVENTS_TOLD = ("leader.", "membership.changed", "member.state", "quorum.")
TICK_MS = 50  # how often it is told Tick: drains progress at this pace, checks when due
HEALTH_KEY = "health"  # the gossip metadata key holding a node's verdict on itself
DRAINING_KEY = "draining"  # ... and whether it drains (balancers stop sending to it)
GONE = ("dead", "left")
CARRY_OUT_TIMEOUT_S = 5.0


class RaftThreadLagging(Exception):
    """The node's Raft thread did not answer a ping in time (a stalled disk, an overload)."""


class SlowDisk(Exception):
    """An fsync of the node's log took longer than `max_fsync_ms`."""


@dataclass(frozen=True, slots=True)
class RoundDone:
    """This node's own checks finished a round."""

    result: RoundResult


def policy_settings(config: ClusterConfig) -> PolicySettings:
    failover = config.failover
    return PolicySettings(
        enabled=failover.enabled,
        stabilization_s=failover.stabilization_ms / 1000,
        min_quorum=failover.min_quorum,
        max_lag_entries=failover.max_lag_entries,
        min_action_interval_s=failover.min_action_interval_ms / 1000,
    )


class FailoverActor(pykka.ThreadingActor):
    """Told `Tick()` every TICK_MS and node events (`EVENTS_TOLD`); asked `drain`, `undrain`."""

    def __init__(
        self,
        config: ClusterConfig,
        node_id: str,
        transport: Transport,
        board: StatusBoard,
        events: EventBus,
        *,
        raft: pykka.ActorRef | None,
        gossip: pykka.ActorRef | None,
        user_checks: Sequence[UserCheck] = (),
    ) -> None:
        super().__init__()
        self._node_id = node_id
        self._transport = transport
        self._board = board
        self._events = events
        self._raft = raft.proxy() if raft is not None else None
        self._gossip = gossip.proxy() if gossip is not None else None
        self._own_checks = (
            [*user_checks, self._raft_thread] if self._raft is not None else user_checks
        )
        self._round_pool = ThreadPoolExecutor(1, thread_name_prefix=f"caddy-checks-{node_id}")
        self._round_running = False
        self._next_round = time.monotonic()
        self._desired_voters = len(config.voters)
        self._membership: Membership = config.membership
        self._histories: dict[str, HealthHistory] = {}
        self._gossip_state: dict[str, str] = {}
        self._reported: dict[str, str] = {}  # each peer's verdict on itself, from gossip
        self._has_quorum = True
        self._leading = False
        self._drain: Drain | None = None
        self._draining_peers: set[str] = set()
        self._moving: TransferLeadership | None = None  # a transfer started, not yet seen done
        self._last_action: dict[str, Any] | None = None
        self._last_action_at: float | None = None
        self._decision = Decision()
        self._hook_subscription: Subscription | None = None
        self._adopt(config)
        self._section = self._status()  # replaced whole: read by other threads
        board.contribute("failover", lambda: {**self._section, "hooks": self._hooks.status()})

    def _adopt(self, config: ClusterConfig) -> None:
        """Take the settings of `config`: at start, and at each settings reload (all of them are
        live, `caddy.reload`); verdicts reached so far stand."""
        settings = config.failover
        self._policy = policy_settings(config)
        self._threshold = settings.failure_threshold
        for history in self._histories.values():
            history.threshold = self._threshold
        self._interval_s = settings.health_check_interval_ms / 1000
        self._window_s = (
            contact_window_ms(
                config.raft.election_timeout_max_ms, config.transport.peer_heartbeat_ms
            )
            / 1000
        )
        self._max_raft_lag_s = settings.max_raft_lag_ms / 1000
        self._max_fsync_s = settings.max_fsync_ms / 1000
        self._runner = HealthCheckRunner(self._node_id, settings.health_checks, self._own_checks)
        self._transfer_timeout_s = 3 * config.raft.election_timeout_max_ms / 1000
        if self._hook_subscription is not None:
            self._hook_subscription.cancel()
            self._hook_subscription = None
        self._hooks = HookRunner(self._node_id, settings)
        if self._hooks.configured:
            self._hook_subscription = self._events.subscribe(self._hooks, kinds=self._hooks.kinds())

    def reload_settings(self, config: ClusterConfig) -> None:
        """A settings reload (`ClusterManager.reload`)."""
        self._adopt(config)
        self._next_round = min(self._next_round, time.monotonic() + self._interval_s)
        self._section = self._status()

    # ----- mailbox ------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Inbound) and message.route is not None:
            self._on_admin(message)
        elif isinstance(message, Tick):
            self._step_drain()
            if time.monotonic() >= self._next_round:
                self._next_round += self._interval_s
                self._start_round()
        elif isinstance(message, RoundDone):
            self._round_running = False
            self._judge(message.result)
        elif isinstance(message, MemberStateChanged):
            self._on_member(message)
        elif isinstance(message, MembershipChanged):
            self._membership = Membership(
                frozenset(message.voters), frozenset(message.learners), frozenset(message.witnesses)
            )
        elif isinstance(message, QuorumLost | QuorumRegained):
            self._has_quorum = isinstance(message, QuorumRegained)
        elif isinstance(message, LeaderElected):
            self._leading = True
        elif isinstance(message, LeaderLost):
            self._leading = False
        elif isinstance(message, LeaderChanged):
            self._leader_changed(message.leader)

    # ----- draining -------------------------------------------------------------------------------

    def drain(self, reason: str, timeout_s: float) -> threading.Event:
        """Start draining (no-op when already draining); the returned event is set when the drain
        finished: leadership handed over, requests in flight answered, or the timeout passed."""
        if self._drain is not None:
            return self._drain.finished
        if self._raft is None:
            done = threading.Event()
            done.set()
            return done
        self._drain = Drain(
            self._node_id, reason, timeout_s, self._raft, self._board, self._transfer_timeout_s
        )
        log.info("node %s: draining (%s)", self._node_id, reason)
        self._events.publish(DrainStarted, reason=reason)
        self._gossip_metadata({DRAINING_KEY: True})
        self._step_drain()
        return self._drain.finished

    def undrain(self) -> bool:
        """Take client requests again; False when it was not draining."""
        if self._drain is None or self._raft is None:
            return False
        self._raft.set_draining(False).get(timeout=CARRY_OUT_TIMEOUT_S)
        self._drain = None
        self._gossip_metadata({DRAINING_KEY: None})
        log.info("node %s: undrained", self._node_id)
        self._section = self._status()
        return True

    def _step_drain(self) -> None:
        drain = self._drain
        if drain is None or drain.finished.is_set():
            return
        if drain.step():
            if drain.moved_to is not None:
                reason = f"{self._node_id} is draining ({drain.reason})"
                self._events.publish(LeadershipMoved, leader=drain.moved_to, reason=reason)
            self._events.publish(DrainFinished, in_flight=drain.in_flight)
        self._section = self._status()

    def on_stop(self) -> None:
        self._round_pool.shutdown(wait=False, cancel_futures=True)
        self._runner.close()

    def _start_round(self) -> None:
        if self._round_running:
            return  # a check still runs; its timeout ends the round
        if not len(self._runner):
            self._judge(RoundResult(True))
            return
        self._round_running = True
        tell = self.actor_ref.tell
        self._round_pool.submit(lambda: tell(RoundDone(self._runner.run(self._interval_s))))

    def _raft_thread(self) -> None:
        """The node's own check of its Raft thread and disk: the thread (which also writes the
        log) must answer a ping within `max_raft_lag_ms`, and no fsync of the log since the
        last round may have taken longer than `max_fsync_ms`."""
        assert self._raft is not None
        try:
            slowest_sync_s = self._raft.ping().get(timeout=self._max_raft_lag_s)
        except pykka.Timeout:
            lag_ms = self._max_raft_lag_s * 1000
            raise RaftThreadLagging(f"no answer within {lag_ms:g} ms") from None
        if slowest_sync_s > self._max_fsync_s:
            raise SlowDisk(
                f"an fsync of the log took {slowest_sync_s * 1000:.0f} ms "
                f"(at most {self._max_fsync_s * 1000:g} ms)"
            )

    def _on_member(self, message: MemberStateChanged) -> None:
        self._gossip_state[message.member] = message.state
        reported = message.metadata.get(HEALTH_KEY)
        if isinstance(reported, str):
            self._reported[message.member] = reported
        if message.metadata.get(DRAINING_KEY) is True:
            self._draining_peers.add(message.member)
        else:
            self._draining_peers.discard(message.member)
        if message.state == "suspect" and message.previous != "suspect":
            self._events.publish(MemberSuspect, member=message.member)

    # ----- judging and acting -------------------------------------------------------------------

    def _judge(self, own: RoundResult) -> None:
        now = time.monotonic()
        self._record(self._node_id, own.passed, own.reason, now)
        self._publish_own_health()
        contact = self._transport.peer_stats()
        for member in self._members() - {self._node_id}:
            stats = contact.get(member)
            heard = stats.last_heard_s if stats is not None else None
            passed, reason = self._peer_check(member, heard)
            self._record(member, passed, reason, now)
        if self._leading and self._drain is None:  # a drain moves leadership by itself
            self._decide(now)
        else:
            self._decision = Decision()
        self._section = self._status()

    def _peer_check(self, member: str, heard_s_ago: float | None) -> tuple[bool, str]:
        """Whether `member` passed this round, judged from here, and why not."""
        gossip = self._gossip_state.get(member)
        if gossip in GONE:
            return False, f"gossip says {gossip}"
        if heard_s_ago is None or heard_s_ago > self._window_s:
            return False, "unreachable from " + self._node_id
        if self._reported.get(member) == Health.FAILED.value:
            return False, "its own health checks fail"
        return True, ""

    def _record(self, member: str, passed: bool, reason: str, now: float) -> None:
        history = self._histories.get(member)
        if history is None:
            history = self._histories[member] = HealthHistory(self._threshold)
        before = history.state
        if not history.record(passed, now, reason):
            return
        if history.state is Health.FAILED:
            log.warning("node %s: %s failed: %s", self._node_id, member, reason)
            self._events.publish(MemberFailed, member=member, reason=reason)
        elif before is Health.FAILED:  # from unknown, a first verdict is no recovery
            log.info("node %s: %s recovered", self._node_id, member)
            self._events.publish(MemberRecovered, member=member)

    def _publish_own_health(self) -> None:
        state = self._histories[self._node_id].state
        if state is not Health.UNKNOWN:
            self._gossip_metadata({HEALTH_KEY: state.value})

    def _gossip_metadata(self, changes: dict[str, Any]) -> None:
        if self._gossip is not None:
            self._gossip.update_metadata(changes)

    def _members(self) -> frozenset[str]:
        m = self._membership
        return m.voters | m.learners | m.witnesses

    def _view(self, now: float) -> ClusterView | None:
        """What this node knows, as the policies read it; None unless it leads."""
        raft = self._board.raft
        if raft is None or raft.state != "leader" or self._raft is None:
            return None
        match = {peer: int(p["match"]) for peer, p in raft.followers.items()}
        match[self._node_id] = raft.last_log_index
        m = self._membership
        return ClusterView(
            node_id=self._node_id,
            leader=True,
            has_quorum=self._has_quorum,
            voters=m.voters,
            learners=m.learners,
            witnesses=m.witnesses,
            health={node: history.verdict() for node, history in self._histories.items()},
            draining=frozenset(self._draining_peers),
            match=match,
            commit_index=raft.commit_index,
            last_index=raft.last_log_index,
            change_pending=raft.membership_change_pending,
            desired_voters=self._desired_voters,
            now=now,
            last_action_at=self._last_action_at,
        )

    def _decide(self, now: float) -> None:
        view = self._view(now)
        self._decision = decide(view, self._policy) if view is not None else Decision()
        if self._decision.action is not None:
            self._carry_out(self._decision.action, now)

    def _on_admin(self, request: Inbound) -> None:
        """An operator's `admin.*` request (caddy-ctl): answered by the leader, checked by
        `caddy.reconfig`; a follower redirects it."""
        assert request.route is not None
        envelope = request.envelope
        view = self._view(time.monotonic())
        if view is None:
            leader = self._board.raft.leader if self._board.raft is not None else None
            self._transport.reply(request.route, REDIRECT_KIND, redirect_body(leader))
            return
        body = envelope.body if isinstance(envelope.body, dict) else {}
        plan = plan_request(envelope.kind, body, view, self._policy.max_lag_entries)
        refusal = plan.refusal
        if refusal is None and plan.action is not None:
            refusal = self._carry_out(plan.action, time.monotonic())
        if refusal is not None:
            self._transport.reply(request.route, ERROR_KIND, error_body(refusal, retry=False))
        else:
            self._transport.reply(request.route, OK_KIND, ok_body(plan.value))
        self._section = self._status()

    def _carry_out(self, action: Action, now: float) -> str | None:
        """Ask the Raft actor to start `action`; record it; the refusal, or None."""
        assert self._raft is not None
        try:
            refusal = self._raft.carry_out(action).get(timeout=CARRY_OUT_TIMEOUT_S)
        except Exception as error:  # the Raft actor is gone or stuck: report, try next round
            refusal = f"{type(error).__name__}: {error}"
        self._last_action_at = now
        self._last_action = {
            "kind": action.kind,
            "node": action.target if isinstance(action, TransferLeadership) else action.node,
            "reason": action.reason,
            "time": time.time(),
            "refused": refusal,
        }
        if refusal is not None:
            log.warning("node %s: failover %s refused: %s", self._node_id, action.kind, refusal)
            return refusal
        log.warning(
            "node %s: failover: %s %s: %s",
            self._node_id,
            action.kind,
            self._last_action["node"],
            action.reason,
        )
        if isinstance(action, TransferLeadership):
            self._moving = action  # the event comes when the target leads
        elif isinstance(action, PromoteLearner):
            self._events.publish(LearnerPromoted, member=action.node, reason=action.reason)
        elif isinstance(action, RemoveVoter):
            self._events.publish(VoterRemoved, member=action.node, reason=action.reason)
        return None

    def _leader_changed(self, leader: str | None) -> None:
        moving, self._moving = self._moving, None
        if moving is None or leader is None:
            self._moving = moving
        elif leader == moving.target:
            self._events.publish(LeadershipMoved, leader=leader, reason=moving.reason)

    def _status(self) -> dict[str, Any]:
        return {
            "enabled": self._policy.enabled,
            "health": {
                member: self._histories[member].state.value
                if member in self._histories
                else Health.UNKNOWN.value
                for member in sorted(self._members())
            },
            "reasons": {
                member: history.reason
                for member, history in sorted(self._histories.items())
                if history.state is Health.FAILED
            },
            "draining": self._drain is not None,
            "drain": self._drain.status() if self._drain is not None else None,
            "last_action": self._last_action,
            "waiting": self._decision.waiting,
        }
