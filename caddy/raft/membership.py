"""Cluster membership: who votes, the quorum arithmetic, and one-at-a-time membership changes.

Voters and witnesses form the voting set; learners receive the log but never count.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import msgpack

from caddy.bounds import MAX_MEMBERS, is_name
from caddy.errors import WireError
from caddy.raft.errors import RequestRejected
from caddy.raft.types import Membership


class MemberRole(Enum):
    """What a node is in a membership."""

    VOTER = "voter"
    LEARNER = "learner"
    WITNESS = "witness"
    NONE = "none"  # not a member (not yet added, or removed)


class ChangeKind(Enum):
    """One single-server membership change."""

    ADD_VOTER = "add_voter"
    ADD_LEARNER = "add_learner"
    ADD_WITNESS = "add_witness"
    PROMOTE_LEARNER = "promote_learner"
    DEMOTE_VOTER = "demote_voter"  # a voter becomes a learner: it leaves the voting set
    REMOVE_NODE = "remove_node"


def role_of(membership: Membership, node_id: str) -> MemberRole:
    """The role `node_id` holds in `membership`."""
    if node_id in membership.voters:
        return MemberRole.VOTER
    if node_id in membership.witnesses:
        return MemberRole.WITNESS
    if node_id in membership.learners:
        return MemberRole.LEARNER
    return MemberRole.NONE


def voting_members(membership: Membership) -> frozenset[str]:
    """Voters and witnesses: the nodes whose acknowledgements and votes count."""
    return membership.voters | membership.witnesses


def quorum_size(voting_count: int) -> int:
    """Smallest majority of `voting_count` members."""
    return voting_count // 2 + 1


def quorum_index(values: list[int]) -> int:
    """The largest value that a majority of `values` reach (0 when there are none)."""
    if not values:
        return 0
    ordered = sorted(values, reverse=True)
    return ordered[quorum_size(len(ordered)) - 1]


def members(membership: Membership) -> frozenset[str]:
    """Everybody the leader replicates to."""
    return membership.voters | membership.learners | membership.witnesses


def apply_change(
    membership: Membership, kind: ChangeKind, node_id: str, address: str | None = None
) -> Membership:
    """The membership after one change; raises RequestRejected when the change makes no sense.
    An addition may say where the node listens (`address`), which the membership then carries.

    Each change moves at most one node in or out of the voting set, so any majority of the old
    voting set overlaps any majority of the new one (Raft dissertation section 4.1).
    """
    role = role_of(membership, node_id)
    voters, learners, witnesses = membership.voters, membership.learners, membership.witnesses
    if kind in _ADDITIONS:
        if role is not MemberRole.NONE:
            raise RequestRejected(f"{node_id} is already a {role.value}")
        if kind is ChangeKind.ADD_VOTER:
            voters = voters | {node_id}
        elif kind is ChangeKind.ADD_LEARNER:
            learners = learners | {node_id}
        else:
            witnesses = witnesses | {node_id}
    elif kind is ChangeKind.PROMOTE_LEARNER:
        if role is not MemberRole.LEARNER:
            raise RequestRejected(f"{node_id} is not a learner")
        learners, voters = learners - {node_id}, voters | {node_id}
    elif kind is ChangeKind.DEMOTE_VOTER:
        if role is not MemberRole.VOTER:
            raise RequestRejected(f"{node_id} is not a voter")
        if voters == {node_id}:
            raise RequestRejected(f"{node_id} is the last voter")
        voters, learners = voters - {node_id}, learners | {node_id}
    else:
        if role is MemberRole.NONE:
            raise RequestRejected(f"{node_id} is not a member")
        if role is MemberRole.VOTER and voters == {node_id}:
            raise RequestRejected(f"{node_id} is the last voter")
        voters, learners = voters - {node_id}, learners - {node_id}
        witnesses = witnesses - {node_id}
    addresses = tuple(pair for pair in membership.addresses if pair[0] != node_id)
    if address is not None and kind in _ADDITIONS:
        addresses = tuple(sorted((*addresses, (node_id, address))))
    elif kind is not ChangeKind.REMOVE_NODE:
        addresses = membership.addresses
    return Membership(voters, learners, witnesses, addresses)


_ADDITIONS = frozenset({ChangeKind.ADD_VOTER, ChangeKind.ADD_LEARNER, ChangeKind.ADD_WITNESS})
MAX_ADDRESS_LENGTH = 256


def membership_to_wire(membership: Membership) -> dict[str, Any]:
    """A msgpack-able dict with sorted member lists (and the addresses, when there are any)."""
    body: dict[str, Any] = {
        "voters": sorted(membership.voters),
        "learners": sorted(membership.learners),
        "witnesses": sorted(membership.witnesses),
    }
    if membership.addresses:
        body["addresses"] = dict(membership.addresses)
    return body


def membership_from_wire(body: Any) -> Membership:
    """Validate and decode `membership_to_wire` output; raises WireError on anything else:
    each role a list of at most MAX_MEMBERS node ids (short strs, see `caddy.bounds`)."""
    if type(body) is not dict:
        raise WireError("membership: expected a map")
    groups = []
    for key in ("voters", "learners", "witnesses"):
        names = body.get(key)
        if (
            type(names) not in (list, tuple)
            or len(names) > MAX_MEMBERS
            or not all(map(is_name, names))
        ):
            raise WireError(f"membership.{key}: expected a list of node ids")
        groups.append(frozenset(names))
    voters, learners, witnesses = groups
    if voters & learners or voters & witnesses or learners & witnesses:
        raise WireError("membership: a node holds two roles")
    addresses = body.get("addresses", {})
    if (
        type(addresses) is not dict
        or not all(map(is_name, addresses))
        or not all(_is_address(value) for value in addresses.values())
        or not addresses.keys() <= voters | learners | witnesses
    ):
        raise WireError("membership.addresses: expected a map of members to addresses")
    return Membership(voters, learners, witnesses, tuple(sorted(addresses.items())))


def _is_address(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_ADDRESS_LENGTH


def encode_membership(membership: Membership) -> bytes:
    """The payload of a CONFIG log entry."""
    return msgpack.packb(membership_to_wire(membership), use_bin_type=True)


def decode_membership(data: bytes) -> Membership:
    """Decode a CONFIG entry payload; raises WireError when it is not one."""
    if type(data) is not bytes:
        raise WireError("membership: expected bytes")
    try:
        body = msgpack.unpackb(data, raw=False)
    except Exception as error:  # msgpack raises several unrelated types on garbage
        raise WireError(f"membership: not msgpack ({error.__class__.__name__})") from None
    return membership_from_wire(body)
