"""Raft messages <-> msgpack-able dicts, with strict validation of everything that arrives.

Peers are untrusted: `from_wire` raises WireError (never anything else) for any malformed body:
ints are exact ints in 0..MAX_INT64 (no bool, no float), node ids short strs, entry data bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from caddy.bounds import MAX_INT64, MAX_NAME_LENGTH, describe
from caddy.errors import WireError
from caddy.raft.membership import decode_membership, membership_from_wire, membership_to_wire
from caddy.raft.messages import MESSAGE_TYPES, AppendEntries, Message
from caddy.raft.types import Entry, EntryKind, SnapshotMeta

MAX_NODE_ID_LENGTH = MAX_NAME_LENGTH  # the envelope's sender must match, and is no longer
_ARRAYS = (list, tuple)  # msgpack makes lists; tuples are what to_wire's callers may hand in
_ENTRY_KINDS = {int(kind): kind for kind in EntryKind}
_MISSING = object()


def _int(value: Any, name: str) -> int:
    if type(value) is int and 0 <= value <= MAX_INT64:
        return value
    raise WireError(f"{name}: expected an integer in 0..2**63-1, got {describe(value)}")


def _node_id(value: Any, name: str) -> str:
    if type(value) is str and 0 < len(value) <= MAX_NODE_ID_LENGTH:
        return value
    raise WireError(f"{name}: expected a node id, got {describe(value)}")


def _bool(value: Any, name: str) -> bool:
    if type(value) is not bool:
        raise WireError(f"{name}: expected a boolean")
    return value


def _bytes(value: Any, name: str) -> bytes:
    if type(value) is not bytes:  # msgpack makes exact bytes: no walk, whatever their size
        raise WireError(f"{name}: expected bytes")
    return value


def _entry(value: Any, name: str, position: int) -> Entry:
    """One [index, term, kind, data] entry; its name is only spelled out for an error."""
    if type(value) in _ARRAYS and len(value) == 4:
        index, term, kind_value, data = value
        if (
            type(index) is int
            and type(term) is int
            and type(kind_value) is int  # before the lookup: True would find kind 1
            and type(data) is bytes
            and 0 <= index <= MAX_INT64
            and 0 <= term <= MAX_INT64
        ):
            kind = _ENTRY_KINDS.get(kind_value)
            if kind is EntryKind.CONFIG:
                decode_membership(data)
            if kind is not None:
                return Entry(index, term, kind, data)
    where = f"{name}[{position}]"
    if type(value) not in _ARRAYS or len(value) != 4:
        raise WireError(f"{where}: expected [index, term, kind, data]")
    _int(value[0], f"{where}.index")
    _int(value[1], f"{where}.term")
    kind_value = _int(value[2], f"{where}.kind")
    _bytes(value[3], f"{where}.data")
    raise WireError(f"{where}.kind: unknown entry kind {kind_value}")


def _entries(value: Any, name: str) -> tuple[Entry, ...]:
    if type(value) not in _ARRAYS:  # as many as the frame holds: its size bounds the work
        raise WireError(f"{name}: expected a list")
    return tuple([_entry(item, name, position) for position, item in enumerate(value)])


def _meta(value: Any, name: str) -> SnapshotMeta:
    if type(value) is not dict:
        raise WireError(f"{name}: expected a map")
    return SnapshotMeta(
        index=_int(value.get("index"), f"{name}.index"),
        term=_int(value.get("term"), f"{name}.term"),
        membership=membership_from_wire(value.get("membership")),
    )


_DECODERS: dict[str, Callable[[Any, str], Any]] = {
    "int": _int,
    "str": _node_id,
    "bool": _bool,
    "bytes": _bytes,
    "tuple[Entry, ...]": _entries,
    "SnapshotMeta": _meta,
}

# kind -> (message class, [(field name, decoder, name in errors)]), from the annotations.
_SCHEMAS = {
    cls.kind: (
        cls,
        [(field.name, _DECODERS[field.type], f"{cls.kind}.{field.name}") for field in fields(cls)],
    )
    for cls in MESSAGE_TYPES
}


def _encode_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [[entry.index, entry.term, int(entry.kind), entry.data] for entry in value]
    if isinstance(value, SnapshotMeta):
        return {
            "index": value.index,
            "term": value.term,
            "membership": membership_to_wire(value.membership),
        }
    return value


def to_wire(message: Message) -> dict[str, Any]:
    """The msgpack-able body of `message`; send it together with `message.kind`."""
    _, schema = _SCHEMAS[message.kind]
    return {name: _encode_value(getattr(message, name)) for name, _, _ in schema}


def from_wire(kind: str, body: Any) -> Message:
    """Decode and validate a body received with `kind`; raises WireError for anything invalid."""
    if type(kind) is not str or kind not in _SCHEMAS:
        raise WireError(f"unknown raft message kind ({describe(kind)})")
    if type(body) is not dict:
        raise WireError(f"{kind}: expected a map")
    cls, schema = _SCHEMAS[kind]
    values = {}
    for name, decode, where in schema:
        value = body.get(name, _MISSING)
        if value is _MISSING:
            raise WireError(f"{where}: missing")
        values[name] = decode(value, where)
    message = cls(**values)
    if isinstance(message, AppendEntries):
        _check_append_entries(message)
    return message


def _check_append_entries(message: AppendEntries) -> None:
    """Entries must continue prev_index contiguously with terms that never go down."""
    index, term = message.prev_index, message.prev_term
    if term > message.term:
        raise WireError("raft.append: prev_term is above the message term")
    for entry in message.entries:
        index += 1
        if entry.index != index:
            raise WireError(f"raft.append: entry {entry.index} is out of sequence")
        if entry.term < term or entry.term > message.term:
            raise WireError(f"raft.append: entry {entry.index} has an impossible term")
        term = entry.term
