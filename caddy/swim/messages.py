"""SWIM messages (probes, gossip, full-state sync) and their compact, strictly checked wire form.

Peers are untrusted: `from_wire` returns a message or raises WireError, nothing else; its errors
show `describe(value)` of what was wrong, never the value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from caddy.bounds import MAX_MEMBERS, MAX_NAME_LENGTH, describe
from caddy.errors import WireError
from caddy.swim.members import (
    MAX_METADATA_BYTES,
    MAX_METADATA_KEY_LENGTH,
    MemberState,
    Metadata,
    metadata_problem,
)

MAX_SEQ = 2**32 - 1
MAX_INCARNATION = 2**63 - 1
MAX_UPDATES_PER_MESSAGE = 1024
MAX_RECORDS_PER_SYNC = MAX_MEMBERS
# Each metadata pair packs to 2 bytes at least, and each str value to its length at least: beyond
# these the packed size is over MAX_METADATA_BYTES, so nothing larger is looked at any further.
_MAX_METADATA_PAIRS = MAX_METADATA_BYTES // 2
_METADATA_SCALARS = frozenset({str, int, float, bool, type(None)})
_METADATA_INT_RANGE = (-(2**63), 2**64 - 1)  # what msgpack can carry

# Wire codes of update kinds and member states (one table: an update announces a state).
_STATE_CODE = {
    MemberState.ALIVE: 0,
    MemberState.SUSPECT: 1,
    MemberState.DEAD: 2,
    MemberState.LEFT: 3,
}
_CODE_STATE = {code: state for state, code in _STATE_CODE.items()}


@dataclass(frozen=True, slots=True)
class Alive:
    """`member` is alive at `incarnation` with `metadata` (also how metadata changes spread)."""

    member: str
    incarnation: int
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Suspect:
    """`origin` suspects `member` at `incarnation`."""

    member: str
    incarnation: int
    origin: str


@dataclass(frozen=True, slots=True)
class Dead:
    """`origin` declared `member` dead at `incarnation`."""

    member: str
    incarnation: int
    origin: str


@dataclass(frozen=True, slots=True)
class Left:
    """`member` left the group gracefully at `incarnation`."""

    member: str
    incarnation: int


Update = Alive | Suspect | Dead | Left


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One member's full state, as exchanged by push-pull sync."""

    member: str
    incarnation: int
    state: MemberState
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """Asks the receiver to probe `target` and forward its ack (or a nack, when wanted)."""

    seq: int
    target: str
    want_nack: bool = False
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """A ping-req intermediary could not reach the target in time: it is alive and working."""

    seq: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Gossip:
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Sync:
    """Push-pull: the sender's whole member list; `reply_wanted` asks for the receiver's."""

    records: tuple[MemberRecord, ...]
    reply_wanted: bool = False


Message = Ping | Ack | PingReq | Nack | Gossip | Sync

KIND_PING = "swim.ping"
KIND_ACK = "swim.ack"
KIND_PING_REQ = "swim.pingreq"
KIND_NACK = "swim.nack"
KIND_GOSSIP = "swim.gossip"
KIND_SYNC = "swim.sync"
KINDS = (KIND_PING, KIND_ACK, KIND_PING_REQ, KIND_NACK, KIND_GOSSIP, KIND_SYNC)


def update_to_wire(update: Update) -> list[Any]:
    """Compact list: [code, member, incarnation, metadata or origin]; empty metadata left out."""
    if isinstance(update, Alive):
        head = [0, update.member, update.incarnation]
        return head + [dict(update.metadata)] if update.metadata else head
    if isinstance(update, Suspect | Dead):
        code = _STATE_CODE[MemberState.SUSPECT if isinstance(update, Suspect) else MemberState.DEAD]
        return [code, update.member, update.incarnation, update.origin]
    return [3, update.member, update.incarnation]


def update_size(update: Update) -> int:
    """Packed size in bytes, for the piggyback byte budget."""
    return len(msgpack.packb(update_to_wire(update), use_bin_type=True))


def _record_to_wire(record: MemberRecord) -> list[Any]:
    head = [record.member, record.incarnation, _STATE_CODE[record.state]]
    return head + [dict(record.metadata)] if record.metadata else head


def to_wire(message: Message) -> tuple[str, dict[str, Any]]:
    """The (kind, body) pair the transport packs; optional fields are left out when unset."""
    body: dict[str, Any]
    if isinstance(message, Sync):
        body = {"m": [_record_to_wire(record) for record in message.records]}
        if message.reply_wanted:
            body["r"] = True
        return KIND_SYNC, body
    if isinstance(message, Gossip):
        return KIND_GOSSIP, {"g": [update_to_wire(u) for u in message.updates]}
    body = {"s": message.seq}
    if isinstance(message, PingReq):
        body["t"] = message.target
        if message.want_nack:
            body["n"] = True
    if message.updates:
        body["g"] = [update_to_wire(u) for u in message.updates]
    kind = {Ping: KIND_PING, Ack: KIND_ACK, PingReq: KIND_PING_REQ, Nack: KIND_NACK}
    return kind[type(message)], body


def from_wire(kind: Any, body: Any) -> Message:
    """Decode and validate one message; raises WireError on anything malformed."""
    if not isinstance(body, Mapping):
        raise WireError(f"swim ({describe(kind)}): body is not a map")
    if type(kind) is not str:  # before any ==: a nested list compares recursively
        raise WireError(f"unknown swim kind ({describe(kind)})")
    if kind == KIND_SYNC:
        records = _sequence(body, "m", MAX_RECORDS_PER_SYNC, required=True)
        return Sync(tuple(_record(item) for item in records), _flag(body, "r"))
    updates = tuple(_update(item) for item in _sequence(body, "g", MAX_UPDATES_PER_MESSAGE))
    if kind == KIND_GOSSIP:
        if "g" not in body:
            raise WireError("swim.gossip: missing field 'g'")
        return Gossip(updates)
    if kind not in (KIND_PING, KIND_ACK, KIND_PING_REQ, KIND_NACK):
        raise WireError(f"unknown swim kind ({describe(kind)})")
    seq = _integer(body.get("s"), "s", MAX_SEQ)
    if kind == KIND_PING:
        return Ping(seq, updates)
    if kind == KIND_ACK:
        return Ack(seq, updates)
    if kind == KIND_NACK:
        return Nack(seq, updates)
    return PingReq(seq, _member_id(body.get("t"), "t"), _flag(body, "n"), updates)


def _integer(value: Any, what: str, maximum: int) -> int:
    if type(value) is not int or not 0 <= value <= maximum:
        raise WireError(f"swim: {what} must be an int in 0..{maximum}, got {describe(value)}")
    return value


def _member_id(value: Any, what: str) -> str:
    if type(value) is not str or not 0 < len(value) <= MAX_NAME_LENGTH:
        raise WireError(f"swim: {what} must be a member id, got {describe(value)}")
    return value


def _flag(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if type(value) is not bool:
        raise WireError(f"swim: field {key!r} must be a bool")
    return value


def _sequence(body: Mapping[str, Any], key: str, limit: int, required: bool = False) -> list[Any]:
    if key not in body:
        if required:
            raise WireError(f"swim: missing field {key!r}")
        return []
    value = body[key]
    if type(value) not in (list, tuple) or len(value) > limit:
        raise WireError(f"swim: field {key!r} must be a list of at most {limit} items")
    return list(value)


def _metadata(value: Any) -> dict[str, Any]:
    """A flat map of short str keys to scalars, <= MAX_METADATA_BYTES packed (`members`' rule),
    checked for exact types and sizes first, so that the rule only ever sees bounded values."""
    if type(value) is not dict:
        raise WireError(f"swim: metadata must be a map, got {describe(value)}")
    if len(value) > _MAX_METADATA_PAIRS:
        raise WireError(f"swim: metadata of {len(value)} pairs is over {MAX_METADATA_BYTES} bytes")
    for key, item in value.items():
        if type(key) is not str or not 0 < len(key) <= MAX_METADATA_KEY_LENGTH:
            raise WireError(
                f"swim: metadata key must be a str of 1..{MAX_METADATA_KEY_LENGTH} chars, "
                f"got {describe(key)}"
            )
        if type(item) not in _METADATA_SCALARS:
            raise WireError(f"swim: metadata value must be a scalar, got {describe(item)}")
        if type(item) is str and len(item) > MAX_METADATA_BYTES:
            raise WireError(f"swim: metadata value of {len(item)} chars is too long")
        if type(item) is float and not math.isfinite(item):
            raise WireError("swim: metadata value is not a finite number")
        if type(item) is int and not _METADATA_INT_RANGE[0] <= item <= _METADATA_INT_RANGE[1]:
            raise WireError("swim: metadata value is out of range")
    problem = metadata_problem(value)  # the packed size (all else is checked above)
    if problem is not None:
        raise WireError(f"swim: {problem}")
    return dict(value)


def _update(item: Any) -> Update:
    if type(item) not in (list, tuple) or not 3 <= len(item) <= 4:
        raise WireError("swim: an update must be a list of 3 or 4 items")
    code, member, incarnation = item[0], item[1], item[2]
    member = _member_id(member, "update member")
    incarnation = _integer(incarnation, "update incarnation", MAX_INCARNATION)
    if type(code) is not int:  # before any ==: a nested list compares recursively
        raise WireError(f"swim: update code must be an int, got {describe(code)}")
    extra = item[3] if len(item) == 4 else None
    if code == 0:
        return Alive(member, incarnation, _metadata(extra) if len(item) == 4 else {})
    if code in (1, 2) and len(item) == 4:
        origin = _member_id(extra, "update origin")
        return (
            Suspect(member, incarnation, origin) if code == 1 else Dead(member, incarnation, origin)
        )
    if code == 3 and len(item) == 3:
        return Left(member, incarnation)
    raise WireError(f"swim: malformed update (code {describe(code)}, {len(item)} items)")


def _record(item: Any) -> MemberRecord:
    if type(item) not in (list, tuple) or not 3 <= len(item) <= 4:
        raise WireError("swim: a member record must be a list of 3 or 4 items")
    member = _member_id(item[0], "record member")
    incarnation = _integer(item[1], "record incarnation", MAX_INCARNATION)
    code = item[2]
    if type(code) is not int or code not in _CODE_STATE:
        raise WireError(f"swim: unknown member state ({describe(code)})")
    metadata = _metadata(item[3]) if len(item) == 4 else {}
    return MemberRecord(member, incarnation, _CODE_STATE[code], metadata)
