"""Operator membership changes and their safety rules (CONTRACT 8): pure functions of what the
leader knows (`caddy.failover.ClusterView`: the configuration, each member's health verdict and
match index, the commit and last index).

Refused, with a one-line reason, unless forced where a person may truly need it:
- any change while another one is in flight (never forceable: Raft takes one at a time);
- a change after which the members judged healthy and holding the committed log (to within
  `max_lag_entries`: under writes a follower is a few entries behind) could not make progress
  on their own (forceable for a removal: it may be the way out of a dead node); so no removal
  leaves the committed log on the leader alone, and no new voter stalls commits;
- removing or demoting the leader (move leadership first);
- promoting a learner that lacks more than `max_lag_entries` committed entries or lags more
  than that behind the leader's log (under writes a learner is always a few entries behind;
  the automatic promotions of `caddy.failover` want every committed entry);
- moving leadership to a node that is not a data voter, not healthy or not caught up.
The sources of these rules are the failures of peer systems' tools: a rolling reboot that lost
consensus for good (consul#8118), a dead-server cleanup that shrank quorum (consul#5922),
leadership handed to a non-voter (consul#7031).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from caddy.failover import (
    Action,
    ClusterView,
    MembershipChange,
    TransferLeadership,
)
from caddy.quorum import VotingConfig
from caddy.raft.errors import RequestRejected
from caddy.raft.membership import (
    MAX_ADDRESS_LENGTH,
    ChangeKind,
    MemberRole,
    apply_change,
    role_of,
)
from caddy.raft.types import Membership


class Change(Enum):
    """What an operator may ask (`caddy-ctl add-node/promote/demote/remove-node`)."""

    ADD_VOTER = "add_voter"
    ADD_LEARNER = "add_learner"
    ADD_WITNESS = "add_witness"
    PROMOTE = "promote"
    DEMOTE = "demote"
    REMOVE = "remove"

    @property
    def raft_kind(self) -> ChangeKind:
        return _RAFT_KINDS[self]


_RAFT_KINDS = {
    Change.ADD_VOTER: ChangeKind.ADD_VOTER,
    Change.ADD_LEARNER: ChangeKind.ADD_LEARNER,
    Change.ADD_WITNESS: ChangeKind.ADD_WITNESS,
    Change.PROMOTE: ChangeKind.PROMOTE_LEARNER,
    Change.DEMOTE: ChangeKind.DEMOTE_VOTER,
    Change.REMOVE: ChangeKind.REMOVE_NODE,
}
FORCEABLE = frozenset({Change.REMOVE})
ADDITIONS = frozenset({Change.ADD_VOTER, Change.ADD_LEARNER, Change.ADD_WITNESS})


def membership_of(view: ClusterView) -> Membership:
    return Membership(view.voters, view.learners, view.witnesses)


def _current(view: ClusterView, node: str, max_lag_entries: int) -> bool:
    """Healthy, and at most `max_lag_entries` behind the commit index: under writes a follower is
    always a few entries behind the newest commit, which it will hold a moment later; one that
    lags further is not counted on."""
    return view.healthy(node) and view.commit_index - view.match.get(node, -1) <= max_lag_entries


def _quorum_problem(view: ClusterView, after: Membership, max_lag_entries: int) -> str | None:
    """Why the healthy, caught-up members could not make progress in `after`, or None."""
    config = VotingConfig.of(after)
    able = {node for node in config.voting if _current(view, node, max_lag_entries)}
    if config.can_progress(able):
        return None
    return (
        f"{len(able)} of its {len(config.voting)} voting members would be healthy and caught "
        f"up ({', '.join(sorted(able)) or 'none'}): a quorum needs {config.needed}, a data "
        "voter among them"
    )


def change_refusal(
    view: ClusterView, change: Change, node: str, max_lag_entries: int, *, force: bool = False
) -> str | None:
    """Why `change` of `node` may not be made now (one line), or None. `force` skips the rules
    a person may need to break (only for a removal: the quorum and the last-copy rules)."""
    if view.change_pending:
        return "another membership change is in progress; try again when it is committed"
    current = membership_of(view)
    try:
        after = apply_change(current, change.raft_kind, node)
    except RequestRejected as error:
        return str(error)
    if change in (Change.REMOVE, Change.DEMOTE) and node == view.node_id:
        return f"{node} leads: move leadership first (caddy-ctl transfer-leader)"
    if change is Change.PROMOTE:
        if not view.healthy(node):
            return f"{node} is not healthy ({view.verdict(node).state.value})"
        match = view.match.get(node)
        if match is None or view.commit_index - match > max_lag_entries:
            return (
                f"{node} lacks committed entries ({match} < commit index {view.commit_index}, "
                f"at most {max_lag_entries} behind)"
            )
        lag = view.last_index - match
        if lag > max_lag_entries:
            return f"{node} lags {lag} entries behind the leader (at most {max_lag_entries})"
    if force and change in FORCEABLE:
        return None
    problem = _quorum_problem(view, after, max_lag_entries)
    if problem is not None:
        verb = change.value.replace("_", " ")
        return f"{verb} {node} refused: afterwards {problem}"
    return None


def transfer_refusal(view: ClusterView, target: str, max_lag_entries: int) -> str | None:
    """Why leadership may not go to `target` now, or None."""
    role = role_of(membership_of(view), target)
    if target == view.node_id:
        return f"{target} already leads"
    if role is not MemberRole.VOTER:
        what = "not a member" if role is MemberRole.NONE else f"a {role.value}, not a voter"
        return f"{target} is {what}: only a data voter may lead"
    if not view.healthy(target):
        return f"{target} is not healthy ({view.verdict(target).state.value})"
    if not _current(view, target, max_lag_entries):
        match = view.match.get(target)
        return f"{target} is not caught up (match {match}, commit {view.commit_index})"
    return None


def transfer_target(view: ClusterView, max_lag_entries: int) -> str | None:
    """The voter leadership should go to when the operator names none: of those it may go to
    (`transfer_refusal`), the one with the longest log; the smaller id on a tie."""
    allowed = sorted(
        (-view.match.get(node, -1), node)
        for node in view.voters
        if transfer_refusal(view, node, max_lag_entries) is None
    )
    return allowed[0][1] if allowed else None


def restart_refusal(view: ClusterView, node: str, max_lag_entries: int) -> str | None:
    """Why stopping `node` now is unsafe ("unsafe: REASON"), or None when it is safe: every
    other voting member is healthy and caught up, and they keep a quorum without it."""
    current = membership_of(view)
    if role_of(current, node) is MemberRole.NONE:
        return f"{node} is not a member"
    config = VotingConfig.of(current)
    others = config.voting - {node}
    unwell = sorted(other for other in others if not _current(view, other, max_lag_entries))
    if unwell:
        states = ", ".join(f"{other} ({_unwell(view, other, max_lag_entries)})" for other in unwell)
        return f"not every other voting member is healthy and caught up: {states}"
    if not config.can_progress(others):
        return f"without {node} the others ({', '.join(sorted(others))}) have no quorum"
    if node == view.node_id:
        return f"{node} leads: move leadership first (caddy-ctl transfer-leader)"
    return None


def _unwell(view: ClusterView, node: str, max_lag_entries: int) -> str:
    if not view.healthy(node):
        return view.verdict(node).state.value
    return f"match {view.match.get(node)}, commit {view.commit_index}"


ADMIN_KINDS = ("admin.change", "admin.transfer", "admin.check_restart")


@dataclass(frozen=True, slots=True)
class AdminPlan:
    """What the leader does for one operator request: `action` to carry out (then answer
    `value`), or `refusal` to answer with; a check alone has a `value` and no action."""

    action: Action | None = None
    value: Any = None
    refusal: str | None = None


def plan_request(
    kind: str, body: Mapping[str, Any], view: ClusterView, max_lag_entries: int
) -> AdminPlan:
    """The leader's answer to an `admin.*` request (`caddy-ctl` sends them): checked by the
    rules above; a malformed request is refused with what is wrong."""
    node = body.get("node")
    if node is not None and not isinstance(node, str):
        return AdminPlan(refusal=f"bad request: node must be a string, got {type(node).__name__}")
    if kind == "admin.transfer":
        target = node or transfer_target(view, max_lag_entries)
        if target is None:
            return AdminPlan(refusal="no healthy caught-up voter to take over")
        refusal = transfer_refusal(view, target, max_lag_entries)
        action = TransferLeadership(target, reason="operator") if refusal is None else None
        return AdminPlan(action, value=target, refusal=refusal)
    if node is None:
        return AdminPlan(refusal="bad request: which node?")
    if kind == "admin.check_restart":
        reason = restart_refusal(view, node, max_lag_entries)
        return AdminPlan(value={"safe": reason is None, "reason": reason})
    if kind != "admin.change":
        return AdminPlan(refusal=f"bad request: unknown kind {kind!r}")
    try:
        change = Change(body.get("change"))
    except ValueError:
        known = ", ".join(c.value for c in Change)
        return AdminPlan(refusal=f"bad request: change must be one of {known}")
    force = body.get("force") is True
    address = body.get("address")
    if address is not None and not _is_peer_address(address):
        return AdminPlan(refusal=f"bad request: address must be tcp://HOST:PORT, got {address!r}")
    refusal = change_refusal(view, change, node, max_lag_entries, force=force)
    if refusal is not None:
        return AdminPlan(refusal=refusal)
    reason = "operator" + (" (forced)" if force else "")
    address = address if change in ADDITIONS else None
    action = MembershipChange(change.raft_kind, node, reason=reason, address=address)
    after = apply_change(membership_of(view), change.raft_kind, node)
    return AdminPlan(action, value=membership_document(after))


def _is_peer_address(address: Any) -> bool:
    return (
        isinstance(address, str)
        and address.startswith("tcp://")
        and len(address) <= MAX_ADDRESS_LENGTH
    )


def membership_document(membership: Membership) -> dict[str, list[str]]:
    """The shape of the `membership` status section (CONTRACT 8)."""
    return {
        "voters": sorted(membership.voters),
        "learners": sorted(membership.learners),
        "witnesses": sorted(membership.witnesses),
    }
