"""Member values of the SWIM view: states, per-member records, snapshots, events, metadata rules.

Metadata is small and flat (role, zone, client_address, weight...): at most 512 bytes packed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

MetaValue = str | int | float | bool | None
Metadata = Mapping[str, MetaValue]

MAX_METADATA_BYTES = 512
MAX_METADATA_KEY_LENGTH = 64
_INT_RANGE = (-(2**63), 2**64 - 1)  # what msgpack can carry


class MemberState(StrEnum):
    """Where a member stands in this node's view. `left` is a graceful exit, not a failure."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


LIVE_STATES = frozenset({MemberState.ALIVE, MemberState.SUSPECT})


class EventKind(StrEnum):
    """What changed about a member; the gossip actor publishes it as a `member.state` event."""

    JOIN = "join"  # first seen, or back from dead/left with a higher incarnation
    SUSPECT = "suspect"
    ALIVE = "alive"  # a suspicion was refuted
    DEAD = "dead"
    LEAVE = "leave"
    UPDATE = "update"  # metadata changed


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """One change of the member list, with the member's incarnation and metadata after it."""

    kind: EventKind
    member: str
    incarnation: int
    metadata: Metadata


@dataclass(frozen=True, slots=True)
class MemberView:
    """A read-only snapshot of one member, for display (`caddy-ctl members`) and checks."""

    member: str
    incarnation: int
    state: MemberState
    metadata: Metadata


@dataclass(slots=True)
class Member:
    """The core's mutable record of a member; `changed_at` is the tick of its last state change."""

    member: str
    incarnation: int
    state: MemberState
    metadata: dict[str, MetaValue] = field(default_factory=dict)
    changed_at: int = 0

    def view(self) -> MemberView:
        return MemberView(self.member, self.incarnation, self.state, dict(self.metadata))


def metadata_problem(metadata: Any) -> str | None:
    """Why `metadata` is not acceptable (flat map of short keys to scalars, <= 512 B), or None."""
    if not isinstance(metadata, Mapping):
        return "metadata must be a map"
    for key, value in metadata.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_METADATA_KEY_LENGTH:
            return f"metadata key {key!r} must be a string of 1..{MAX_METADATA_KEY_LENGTH} chars"
        if value is not None and not isinstance(value, str | int | float | bool):
            return f"metadata value of {key!r} must be a scalar, got {type(value).__name__}"
        if isinstance(value, int) and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
            return f"metadata value of {key!r} is out of range"
        if isinstance(value, float) and not math.isfinite(value):
            return f"metadata value of {key!r} is not a finite number"
    try:
        size = len(msgpack.packb(dict(metadata), use_bin_type=True))
    except ValueError as error:  # e.g. a string with lone surrogates
        return f"metadata cannot be packed: {error}"
    if size > MAX_METADATA_BYTES:
        return f"metadata is {size} bytes packed, over the {MAX_METADATA_BYTES} limit"
    return None
