"""`caddy-ctl reconfigure NEW_TOPOLOGY`: the steps from the live membership to the one a topology
describes (CONTRACT 8), one single-server change at a time, in the order that keeps the cluster
the most able to survive a failure on the way:

1. additions first: a new data node joins as a learner (it receives a snapshot and the log
   without slowing commits, the Raft dissertation's section 4.2.1 catch-up), a new witness as a
   witness;
2. promotions of the learners that are to vote (the leader refuses one that is not caught up:
   the caller asks again until it is);
3. then the shrinking: demotions, and removals (grow before shrink, so the voting set never
   dips below the smaller of the two ends);
4. the leader's own demotion or removal last, after moving leadership to a voter that stays.

Each step is checked again by the leader's rules (`caddy.reconfig.change_refusal`) when it is
asked for; the caller plans again from the live membership after each step, so a leader change
or a failover action on the way only changes what is left to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from caddy.raft.membership import MemberRole, role_of
from caddy.raft.types import Membership
from caddy.reconfig import Change

TRANSFER = "transfer"  # the one step that is not a membership change


@dataclass(frozen=True, slots=True)
class Step:
    """One thing to ask the leader: a membership change of `node` (`Change` values), or
    `TRANSFER`: move leadership off `node` (to a voter that stays)."""

    action: str
    node: str
    address: str | None = None  # for an addition: where the new node listens

    @property
    def change(self) -> Change | None:
        return None if self.action == TRANSFER else Change(self.action)

    def describe(self) -> str:
        if self.action == TRANSFER:
            return f"move leadership off {self.node}"
        if self.action == Change.ADD_LEARNER.value:
            return f"add {self.node} as a learner ({self.address})"
        if self.action == Change.ADD_WITNESS.value:
            return f"add {self.node} as a witness ({self.address})"
        return f"{self.action} {self.node}"


@dataclass(frozen=True, slots=True)
class Target:
    """A node of the new topology: its role (voter, learner or witness) and peer address."""

    role: str
    address: str


def plan(live: Membership, leader: str | None, target: Mapping[str, Target]) -> list[Step]:
    """Every step from `live` (led by `leader`) to `target`, in order; [] when they agree.
    Raises ValueError for a target no cluster can run: one without a voter."""
    if not any(node.role == MemberRole.VOTER.value for node in target.values()):
        raise ValueError("the new topology has no voter")
    roles = {node: role_of(live, node) for node in target}
    adds: list[Step] = []
    promotions: list[Step] = []
    shrinking: list[Step] = []
    re_adds: list[Step] = []  # after a witness / data-role swap's removal
    for node in sorted(target):
        wanted, now, address = MemberRole(target[node].role), roles[node], target[node].address
        if now is wanted:
            continue
        if now is MemberRole.NONE:
            adds.append(_addition(node, wanted, address))
        elif wanted is MemberRole.VOTER and now is MemberRole.LEARNER:
            promotions.append(Step(Change.PROMOTE.value, node))
        elif wanted is MemberRole.LEARNER and now is MemberRole.VOTER:
            shrinking.append(Step(Change.DEMOTE.value, node))
        else:  # into or out of the witness role: a witness holds no data, so leave and rejoin
            shrinking.append(Step(Change.REMOVE.value, node))
            re_adds.append(_addition(node, wanted, address))
    gone = sorted(node for node in _members(live) if node not in target)
    shrinking += [Step(Change.REMOVE.value, node) for node in gone]
    last = [step for step in shrinking if step.node == leader]
    if last:
        shrinking = [step for step in shrinking if step.node != leader]
        last.insert(0, Step(TRANSFER, leader))
    promotions += _promotions_of(adds, target)
    return adds + promotions + shrinking + last + re_adds + _promotions_of(re_adds, target)


def _addition(node: str, role: MemberRole, address: str) -> Step:
    change = Change.ADD_WITNESS if role is MemberRole.WITNESS else Change.ADD_LEARNER
    return Step(change.value, node, address)


def _promotions_of(additions: list[Step], target: Mapping[str, Target]) -> list[Step]:
    return [
        Step(Change.PROMOTE.value, step.node)
        for step in additions
        if target[step.node].role == MemberRole.VOTER.value
    ]


def _members(membership: Membership) -> frozenset[str]:
    return membership.voters | membership.learners | membership.witnesses
