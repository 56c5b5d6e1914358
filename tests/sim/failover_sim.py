"""The Raft simulation with the failover policy (`caddy.failover`) run by every node, under the
same faults (crashes inside Readies, partitions of every shape, message loss, leader changes)
plus nodes whose own health checks fail for a while ("sick").

Each node judges every member of its configuration each `CHECK_EVERY` steps through
`HealthHistory` (a peer passes when it is up, reachable both ways and not sick: what the
transport's contact and the peer's gossiped verdict tell a real node); whoever leads decides
and carries the action out on its core, as the FailoverActor does. The policy is the only
source of membership changes here, besides operator requests (`caddy.reconfig`'s rules, as
caddy-ctl sends them: adds, promotions, demotions, removals, some forced, and transfers), and,
in some seeds, `caddy-ctl reconfigure` toward a random target membership: each round the
leader's live membership is planned again (`caddy.reconfig_plan`) and its first step asked for.

Checked at every action, beside Raft's own invariants:
- a removal never leaves fewer than `min_quorum` voters, removes only a voter its leader judged
  failed for the stabilization time, and leaves a configuration whose members judged healthy
  can make progress without it;
- a promoted learner holds every committed entry in its durable log at the moment it is
  promoted (whatever the policy or the progress tracking believed);
- leadership goes only to a voter its leader judged healthy and that holds every committed
  entry, and only from a leader that is sick or was judged failed;
- no action comes from a node that is not leader, or twice within the minimum interval;
- an operator's removal or demotion that the rules let through (unforced) leaves the members
  judged healthy and holding every committed entry a quorum; a promotion or a transfer they let
  through goes to a node whose durable log lacks at most `max_lag_entries` committed entries;
- the planner never asks to remove or demote the node that leads (it moves leadership first);
and after healing, the cluster settles as Raft's own simulation demands, with the target
membership of a reconfiguring seed reached.
"""

from __future__ import annotations

import random

from caddy.failover import (
    Action,
    ClusterView,
    Health,
    HealthHistory,
    MembershipChange,
    PolicySettings,
    PromoteLearner,
    RemoveVoter,
    TransferLeadership,
    carry_out,
    decide,
)
from caddy.quorum import QuorumRule, VotingConfig
from caddy.raft.membership import MemberRole, role_of
from caddy.raft.ready import StateRole
from caddy.reconfig import Change, change_refusal, transfer_refusal, transfer_target
from caddy.reconfig_plan import TRANSFER, Target, plan
from tests.sim.raft_sim import InvariantViolation, Scenario, SimNode, World, run_seed

CHECK_EVERY = 5  # steps between two health check rounds

FAILOVER_SCENARIOS = (
    Scenario(("n1", "n2", "n3"), learners=("n4",)),
    Scenario(("n1", "n2", "n3"), learners=("n4", "n5")),
    Scenario(("n1", "n2", "n3", "n4", "n5"), learners=("n6",)),
    Scenario(("n1", "n2", "n3", "n4", "n5")),
    Scenario(("n1", "n2", "n3"), learners=("n4",), witnesses=("w1",)),
)


class FailoverWorld(World):
    scenarios = FAILOVER_SCENARIOS

    def __init__(self, seed: int, schedule=None) -> None:
        super().__init__(seed, schedule)
        self.membership_churn = False  # the policy alone changes the membership
        rng = random.Random(f"{seed}-failover")
        self.threshold = rng.choice((1, 2, 3))
        self.policy = PolicySettings(
            stabilization_s=rng.choice((15, 40, 80)),
            min_quorum=rng.choice((2, 3)),
            max_lag_entries=rng.choice((0, 5, 1000)),
            min_action_interval_s=rng.choice((0, 10, 30)),
        )
        self.sick_rate = rng.choice((0.0, 0.005, 0.02))
        self.operator_rate = rng.choice((0.0, 0.1, 0.3))  # per check round: an operator request
        self.operator_changes: list[tuple[int, Change, str, bool]] = []
        self.target = self.draw_target(rng) if rng.random() < 0.4 else None
        self.reconfigured: list[tuple[int, str, str]] = []  # (step, action, node) carried out
        self.sick_until: dict[str, int] = {}
        self.histories: dict[str, dict[str, HealthHistory]] = {}
        self.last_action_at: dict[str, float] = {}
        self.actions: list[tuple[int, str, Action]] = []

    def draw_target(self, rng: random.Random) -> dict[str, Target]:
        """A membership to reconfigure to: each data node a voter, a learner or gone (one voter
        at least), each witness kept or gone."""
        target = {}
        for node in sorted(self.nodes):
            if node in self.scenario.witnesses:
                roles = ("witness", None)
            else:
                roles = ("voter", "voter", "learner", None)
            role = rng.choice(roles)
            if role is not None:
                target[node] = Target(role, f"sim://{node}")
        data_nodes = sorted(set(self.nodes) - set(self.scenario.witnesses))
        if not any(t.role == "voter" for t in target.values()):
            target[rng.choice(data_nodes)] = Target("voter", "sim://")
        return target

    # ----- faults ---------------------------------------------------------------------------------

    def inject_faults(self) -> None:
        super().inject_faults()
        if self.rng.random() < self.sick_rate:
            node_id = self.rng.choice(list(self.nodes))
            self.sick_until[node_id] = self.now + self.rng.randint(10, 150)
            self.log(f"sick {node_id}")

    def heal(self) -> None:
        super().heal()
        self.sick_until.clear()

    def sick(self, node_id: str) -> bool:
        return self.sick_until.get(node_id, -1) > self.now

    # ----- the policy, as every node runs it ----------------------------------------------------

    def step(self, faults: bool) -> None:
        super().step(faults)
        if self.now % CHECK_EVERY == 0:
            for node in self.live_nodes():
                self.judge(node)
            for node in self.live_nodes():
                if node.core.state is StateRole.LEADER:
                    self.decide(node)
                    if self.target is not None:
                        self.reconfigure(node)
                    elif faults and self.rng.random() < self.operator_rate:
                        self.operate(node)

    def reachable(self, observer: str, member: str) -> bool:
        """What the transport's contact shows `observer`: up, and linked both ways."""
        return member == observer or (
            self.nodes[member].alive
            and self.network.link_up(member, observer)
            and self.network.link_up(observer, member)
        )

    def passes(self, observer: str, member: str) -> bool:
        return self.reachable(observer, member) and not self.sick(member)

    def judge(self, node: SimNode) -> None:
        histories = self.histories.setdefault(node.id, {})
        membership = node.core.membership
        for member in membership.voters | membership.learners | membership.witnesses:
            history = histories.setdefault(member, HealthHistory(self.threshold))
            history.record(self.passes(node.id, member), float(self.now), "sim")

    def view_of(self, node: SimNode) -> ClusterView:
        core = node.core
        membership = core.membership
        match = {node.id: core.last_index}
        for peer in membership.voters | membership.learners | membership.witnesses:
            progress = core.progress_of(peer)
            if progress is not None and peer != node.id:
                match[peer] = progress.match
        histories = self.histories.get(node.id, {})
        return ClusterView(
            node_id=node.id,
            leader=True,
            has_quorum=QuorumRule.of(membership).can_progress(
                m for m in self.nodes if self.reachable(node.id, m)
            ),
            voters=membership.voters,
            learners=membership.learners,
            witnesses=membership.witnesses,
            health={member: h.verdict() for member, h in histories.items()},
            match=match,
            commit_index=core.commit_index,
            last_index=core.last_index,
            change_pending=core.membership_change_pending,
            desired_voters=len(self.scenario.voters),
            now=float(self.now),
            last_action_at=self.last_action_at.get(node.id),
        )

    def decide(self, node: SimNode) -> None:
        view = self.view_of(node)
        action = decide(view, self.policy).action
        if action is None:
            return
        self.check_action(node, view, action)
        if carry_out(node.core, action) is None:
            self.log(f"failover {node.id}: {action}")
            self.actions.append((self.now, node.id, action))
            self.last_action_at[node.id] = float(self.now)

    def operate(self, node: SimNode) -> None:
        """An operator's request, as caddy-ctl sends it: checked by `caddy.reconfig` first."""
        rng = self.rng
        view = self.view_of(node)
        lag = self.policy.max_lag_entries
        if rng.random() < 0.2:
            target = rng.choice([*self.nodes, None])
            target = target or transfer_target(view, lag)
            if target is not None and transfer_refusal(view, target, lag) is None:
                progress = node.core.progress_of(target)  # the core catches it up first
                behind = node.core.commit_index - (progress.match if progress else -1)
                if behind > lag or target not in node.core.membership.voters:
                    raise InvariantViolation(f"operator transfer to {target}, {behind} behind")
                carry_out(node.core, TransferLeadership(target, reason="operator"))
            return
        change = rng.choice(list(Change))
        membership = node.core.membership
        members = membership.voters | membership.learners | membership.witnesses
        fitting = {  # mostly a node the change fits; now and then any, to meet the refusals
            Change.ADD_VOTER: set(self.nodes) - members,
            Change.ADD_LEARNER: set(self.nodes) - members,
            Change.ADD_WITNESS: set(self.nodes) - members,
            Change.PROMOTE: set(membership.learners),
            Change.DEMOTE: set(membership.voters),
            Change.REMOVE: set(members),
        }[change]
        pool = sorted(fitting) if fitting and rng.random() < 0.8 else list(self.nodes)
        member = rng.choice(pool)
        force = rng.random() < 0.1
        if change_refusal(view, change, member, lag, force=force) is not None:
            return
        if change is Change.PROMOTE:
            self.check_operator_promotion(node, member)
        if change in (Change.REMOVE, Change.DEMOTE) and not force:
            self.check_operator_shrink(node, view, change, member)
        if carry_out(node.core, MembershipChange(change.raft_kind, member, "operator")) is None:
            self.log(f"operator {node.id}: {change.value} {member}{' forced' if force else ''}")
            self.operator_changes.append((self.now, change, member, force))

    def reconfigure(self, node: SimNode) -> None:
        """One round of `caddy-ctl reconfigure`: plan from the live membership, ask for the
        first step; the leader's rules check it, as they do a real request."""
        core = node.core
        if core.membership_change_pending:
            return  # caddy-ctl waits for the change in flight to commit
        steps = plan(core.membership, node.id, self.target)
        if not steps:
            return
        step, view, lag = steps[0], self.view_of(node), self.policy.max_lag_entries
        if step.action == TRANSFER:
            target = transfer_target(view, lag)
            if target is not None:
                carry_out(core, TransferLeadership(target, reason="reconfigure"))
                self.reconfigured.append((self.now, step.action, step.node))
            return
        change = step.change
        if step.node == node.id and change in (Change.REMOVE, Change.DEMOTE):
            raise InvariantViolation(f"the plan {change.value}s its leader {node.id}")
        if change_refusal(view, change, step.node, lag) is not None:
            return
        if change is Change.PROMOTE:
            self.check_operator_promotion(node, step.node)
        if change in (Change.REMOVE, Change.DEMOTE):
            self.check_operator_shrink(node, view, change, step.node)
        action = MembershipChange(change.raft_kind, step.node, "reconfigure", step.address)
        if carry_out(core, action) is None:
            self.log(f"reconfigure {node.id}: {change.value} {step.node}")
            self.reconfigured.append((self.now, step.action, step.node))
            self.operator_changes.append((self.now, change, step.node, False))

    def reached_target(self, membership) -> bool:
        return all(
            role_of(membership, node) is MemberRole(self.target[node].role)
            if node in self.target
            else role_of(membership, node) is MemberRole.NONE
            for node in self.nodes
        )

    def coming_back(self, node_id: str) -> bool:
        return self.target is not None and node_id in self.target

    def liveness_bound(self) -> int:
        return super().liveness_bound() + (0 if self.target is None else 40 * CHECK_EVERY)

    def check_operator_shrink(
        self, node: SimNode, view: ClusterView, change: Change, member: str
    ) -> None:
        """Counted here apart from the rules: the members judged healthy whose log is within
        `max_lag_entries` of the commit index must make progress without `member`'s vote."""
        membership = node.core.membership
        after = VotingConfig(membership.voters - {member}, membership.witnesses - {member})
        lag = self.policy.max_lag_entries
        commit = node.core.commit_index
        able = {
            m
            for m in after.voting
            if view.verdict(m).state is Health.HEALTHY
            and (m == node.id or commit - getattr(node.core.progress_of(m), "match", -1) <= lag)
        }
        if not after.can_progress(able):
            raise InvariantViolation(f"operator {change.value} {member}: the rest lack quorum")

    # ----- invariants -----------------------------------------------------------------------------

    def check_action(self, node: SimNode, view: ClusterView, action: Action) -> None:
        core = node.core
        if core.state is not StateRole.LEADER:
            raise InvariantViolation(f"{node.id} acted without leading: {action}")
        last = self.last_action_at.get(node.id)
        if last is not None and self.now - last < self.policy.min_action_interval_s:
            raise InvariantViolation(f"{node.id} acted again after {self.now - last} steps")
        healthy = {m for m, v in view.health.items() if v.state is Health.HEALTHY}
        if isinstance(action, RemoveVoter):
            self.check_removal(node, view, action, healthy)
        elif isinstance(action, PromoteLearner):
            self.check_promotion(node, action)
        elif isinstance(action, TransferLeadership):
            me = view.verdict(node.id).state
            if me is not Health.FAILED:
                raise InvariantViolation(f"{node.id} moved leadership while judged {me}")
            if action.target not in healthy or action.target not in core.membership.voters:
                raise InvariantViolation(f"leadership to {action.target}, not a healthy voter")
            progress = core.progress_of(action.target)
            if progress is None or progress.match < core.commit_index:
                raise InvariantViolation(f"leadership to {action.target}, missing commits")

    def check_removal(
        self, node: SimNode, view: ClusterView, action: RemoveVoter, healthy: set[str]
    ) -> None:
        membership = node.core.membership
        voters_after = membership.voters - {action.node}
        if len(voters_after) < self.policy.min_quorum:
            raise InvariantViolation(f"removing {action.node} leaves {len(voters_after)} voters")
        failed_for = view.verdict(action.node).failed_for(float(self.now))
        if failed_for < self.policy.stabilization_s:
            raise InvariantViolation(f"removed {action.node}, failed only {failed_for} steps")
        after = VotingConfig(voters_after, membership.witnesses)
        if not after.can_progress(healthy - {action.node}):
            raise InvariantViolation(f"without {action.node} the healthy members lack quorum")

    def check_promotion(self, node: SimNode, action: PromoteLearner, lag: int = 0) -> None:
        """The learner's durable log holds every committed entry (an operator's promotion:
        all but `lag` of them; under writes a learner is always a few entries behind)."""
        learner = self.nodes[action.node]
        durable = learner.storage.load()
        base = durable.snapshot.index if durable.snapshot else 0
        held = base + len(durable.entries)
        if held < node.core.commit_index - lag:
            raise InvariantViolation(
                f"{action.node} promoted holding {held} of {node.core.commit_index} committed"
            )

    def check_operator_promotion(self, node: SimNode, member: str) -> None:
        action = PromoteLearner(member, reason="operator")
        self.check_promotion(node, action, self.policy.max_lag_entries)

    def settled(self) -> bool:
        leader = self.any_leader()
        if self.target is not None and (
            leader is None or not self.reached_target(leader.core.membership)
        ):
            return False
        if self.operator_changes:
            return super().settled()  # an operator may go below the floor failover keeps
        if leader is not None and len(leader.core.membership.voters) < min(
            self.policy.min_quorum, len(self.scenario.voters)
        ):
            raise InvariantViolation(f"{leader.core.membership.voters}: below min_quorum")
        return super().settled()


def run_failover_seed(seed: int) -> FailoverWorld:
    return run_seed(seed, world_class=FailoverWorld)
