"""Failover policy: each member's health with hysteresis, and what the leader does about it.

Pure: the FailoverActor feeds it check results, gossip states and Raft's progress, and carries
out the one action `decide` returns. The rules (CONTRACT 6), after Patroni's lag-gated
promotion and Consul Autopilot's stabilization time and dead-server cleanup, with the floor
that Autopilot lacked (consul#5922: cleanup shrank a cluster below a safe quorum):

- a node is failed after `failure_threshold` consecutive failed checks, and healthy again after
  as many passes (`HealthHistory`; a node not yet judged either way is unknown);
- only the leader acts, only with quorum, only when no membership change is in flight, and never
  twice within `min_action_interval_s` (no flapping);
- an unhealthy or draining leader hands leadership to the healthiest caught-up data voter;
- a voter failed for `stabilization_s` is replaced by a caught-up healthy learner (it holds every
  committed entry, so it adds a vote without stalling commits), and then removed; a removal
  never leaves fewer than `min_quorum` voters, nor a configuration whose healthy members
  cannot make progress on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from caddy.errors import NotLeader
from caddy.quorum import VotingConfig
from caddy.raft.errors import RequestRejected
from caddy.raft.membership import ChangeKind
from caddy.raft.node import RaftNode


class Health(Enum):
    HEALTHY = "healthy"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class HealthHistory:
    """One node's check results turned into a verdict: it changes only after `threshold` equal
    results in a row (hysteresis: one flaky check neither fails nor restores a node)."""

    threshold: int
    state: Health = Health.UNKNOWN
    since: float | None = None  # when the verdict last changed
    reason: str = ""  # why the latest failed check failed, while failed
    _run: int = 0  # equal results in a row, ending with the latest
    _run_passed: bool = False

    def record(self, passed: bool, now: float, reason: str = "") -> bool:
        """Add one result (`reason`: why a failed one failed); True when the verdict changed."""
        if self._run and self._run_passed == passed:
            self._run += 1
        else:
            self._run, self._run_passed = 1, passed
        verdict = Health.HEALTHY if passed else Health.FAILED
        if self.state is verdict:
            if not passed:
                self.reason = reason
            return False
        if self._run < self.threshold:
            return False
        self.state, self.since = verdict, now
        self.reason = "" if passed else reason
        return True

    def verdict(self) -> Verdict:
        return Verdict(self.state, self.since, self.reason)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A member's health as the policy reads it."""

    state: Health
    since: float | None = None
    reason: str = ""

    def failed_for(self, now: float) -> float:
        """Seconds this member has been failed (0 when it is not)."""
        if self.state is not Health.FAILED or self.since is None:
            return 0.0
        return now - self.since


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The policy's knobs, in seconds and entries (`FailoverSettings` gives milliseconds)."""

    enabled: bool = True
    stabilization_s: float = 10.0
    min_quorum: int = 3
    max_lag_entries: int = 100  # a learner or successor this far behind the leader is caught up
    min_action_interval_s: float = 5.0


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What this node knows when it decides. `match`: the leader's match index per member (its
    own is its last index); `desired_voters`: how many voters the cluster is meant to have (a
    failed voter is replaced by a learner only while fewer than that are not failed)."""

    node_id: str
    leader: bool
    has_quorum: bool
    voters: frozenset[str]
    learners: frozenset[str] = frozenset()
    witnesses: frozenset[str] = frozenset()
    health: Mapping[str, Verdict] = field(default_factory=dict)
    draining: frozenset[str] = frozenset()
    match: Mapping[str, int] = field(default_factory=dict)
    commit_index: int = 0
    last_index: int = 0
    change_pending: bool = False
    desired_voters: int = 3
    now: float = 0.0
    last_action_at: float | None = None

    def verdict(self, node: str) -> Verdict:
        return self.health.get(node, Verdict(Health.UNKNOWN))

    def healthy(self, node: str) -> bool:
        return self.verdict(node).state is Health.HEALTHY and node not in self.draining

    def caught_up(self, node: str, max_lag_entries: int) -> bool:
        """Holds every committed entry and is within `max_lag_entries` of the leader's log."""
        match = self.match.get(node)
        return (
            promotion_refusal(node, match, self.commit_index) is None
            and self.last_index - (match or 0) <= max_lag_entries
        )


def promotion_refusal(node: str, match: int | None, commit_index: int) -> str | None:
    """Why `node` (the leader's `match` index for it, None: unknown) may not become a voter
    now, or None: a new voter must hold every committed entry, or it stalls commits until it
    catches up. Asked when deciding and again where the change is made, on the live log."""
    if match is None or match < commit_index:
        return f"{node} lacks committed entries ({match} < commit index {commit_index})"
    return None


@dataclass(frozen=True, slots=True)
class TransferLeadership:
    target: str
    reason: str
    kind: str = "transfer_leadership"


@dataclass(frozen=True, slots=True)
class PromoteLearner:
    node: str
    reason: str
    kind: str = "promote_learner"


@dataclass(frozen=True, slots=True)
class RemoveVoter:
    node: str
    reason: str
    kind: str = "remove_voter"


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """An operator's change (`caddy.reconfig` checked it first)."""

    change: ChangeKind
    node: str
    reason: str
    address: str | None = None  # an addition's peer address
    kind: str = "membership_change"


Action = TransferLeadership | PromoteLearner | RemoveVoter | MembershipChange


@dataclass(frozen=True, slots=True)
class Decision:
    """The action to take (None: nothing) and, when something is wrong but nothing is done,
    why (for the status page: an operator sees what the policy is waiting for)."""

    action: Action | None = None
    waiting: str | None = None


def decide(view: ClusterView, settings: PolicySettings) -> Decision:
    """The one thing the leader should do now, by the rules in the module docstring."""
    if not view.leader:
        return Decision()
    trouble = _trouble(view, settings)
    if trouble is None:
        return Decision()
    if not settings.enabled:
        return Decision(waiting=f"{trouble}; automatic failover is off")
    if not view.has_quorum:
        return Decision(waiting=f"{trouble}; no action without quorum")
    if view.change_pending:
        return Decision(waiting=f"{trouble}; a membership change is in progress")
    if view.last_action_at is not None:
        wait = view.last_action_at + settings.min_action_interval_s - view.now
        if wait > 0:
            return Decision(waiting=f"{trouble}; next action allowed in {wait:.1f} s")
    if _leader_must_go(view):
        return _move_leadership(view, settings)
    return _replace_failed_voter(view, settings)


def _trouble(view: ClusterView, settings: PolicySettings) -> str | None:
    """What calls for an action, in words, or None when all is well."""
    me = view.verdict(view.node_id)
    if view.node_id in view.draining:
        return f"leader {view.node_id} is draining"
    if me.state is Health.FAILED:
        return f"leader {view.node_id} is unhealthy ({me.reason or 'check failed'})"
    failed = _stabilized_failures(view, settings)
    if failed:
        return f"voter {failed[0]} failed {view.verdict(failed[0]).failed_for(view.now):.1f} s ago"
    return None


def _leader_must_go(view: ClusterView) -> bool:
    return view.node_id in view.draining or view.verdict(view.node_id).state is Health.FAILED


def successor(view: ClusterView, settings: PolicySettings) -> str | None:
    """The healthy, caught-up data voter (not this node) with the longest log."""
    return _best_caught_up(view, view.voters - {view.node_id}, settings)


def _best_caught_up(
    view: ClusterView, nodes: frozenset[str], settings: PolicySettings
) -> str | None:
    """Of `nodes`, the healthy caught-up one with the longest log; the smaller id on a tie."""
    candidates = sorted(
        (-view.match[node], node)
        for node in nodes
        if view.healthy(node) and view.caught_up(node, settings.max_lag_entries)
    )
    return candidates[0][1] if candidates else None


def _move_leadership(view: ClusterView, settings: PolicySettings) -> Decision:
    target = successor(view, settings)
    why = _trouble(view, settings)
    if target is None:
        return Decision(waiting=f"{why}; no healthy caught-up voter to take over")
    return Decision(TransferLeadership(target, reason=why or ""))


def _stabilized_failures(view: ClusterView, settings: PolicySettings) -> list[str]:
    """Voters (not this node) failed at least the stabilization time, longest failed first."""
    failed = [
        (-view.verdict(node).failed_for(view.now), node)
        for node in view.voters - {view.node_id}
        if view.verdict(node).failed_for(view.now) >= settings.stabilization_s
    ]
    return [node for _, node in sorted(failed)]


def _replace_failed_voter(view: ClusterView, settings: PolicySettings) -> Decision:
    failed = _stabilized_failures(view, settings)
    gone = failed[0]
    not_failed = [v for v in view.voters if view.verdict(v).state is not Health.FAILED]
    if len(not_failed) < view.desired_voters:
        learner = _best_caught_up(view, view.learners, settings)
        if learner is not None:
            after = VotingConfig(view.voters | {learner}, view.witnesses)
            if after.can_progress(_healthy_members(view) | {learner}):
                return Decision(PromoteLearner(learner, reason=f"replaces failed voter {gone}"))
    remaining = VotingConfig(view.voters - {gone}, view.witnesses)
    if len(remaining.voters) < settings.min_quorum:
        return Decision(
            waiting=f"removing {gone} would leave {len(remaining.voters)} voters, below "
            f"min_quorum {settings.min_quorum}"
        )
    if not remaining.can_progress(_healthy_members(view)):
        return Decision(waiting=f"without {gone} the healthy members would have no quorum")
    reason = f"failed {view.verdict(gone).failed_for(view.now):.1f} s ago"
    return Decision(RemoveVoter(gone, reason=reason))


def _healthy_members(view: ClusterView) -> frozenset[str]:
    members = view.voters | view.learners | view.witnesses
    return frozenset(node for node in members if view.healthy(node))


def carry_out(core: RaftNode, action: Action) -> str | None:
    """Start `action` on the leader's Raft core; None when started, else why not. An automatic
    promotion is checked again against the live log (the decision was made on a view a moment
    old)."""
    try:
        if isinstance(action, TransferLeadership):
            core.transfer_leadership(action.target)
            return None
        address = None
        if isinstance(action, PromoteLearner):
            change = ChangeKind.PROMOTE_LEARNER
        elif isinstance(action, RemoveVoter):
            change = ChangeKind.REMOVE_NODE
        else:
            change, address = action.change, action.address
        if isinstance(action, PromoteLearner):  # an operator's was checked with its lag
            progress = core.progress_of(action.node)
            match = progress.match if progress is not None else None
            refusal = promotion_refusal(action.node, match, core.commit_index)
            if refusal is not None:
                return refusal
        core.change_membership(change, action.node, address)
    except (NotLeader, RequestRejected) as error:
        return str(error) or type(error).__name__
    return None
