"""Raft messages <-> msgpack-able dicts, with strict validation of everything that arrives.

Peers are untrusted: `from_wire` raises WireError (never anything else) for any malformed body.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from caddy.errors import WireError
from caddy.raft.membership import decode_membership, membership_from_wire, membership_to_wire
from caddy.raft.messages import MESSAGE_TYPES, AppendEntries, Message
from caddy.raft.types import Entry, EntryKind, SnapshotMeta

MAX_NODE_ID_LENGTH = 256


def _int(value: Any, name: str) -> int:
    if type(value) is not int or value < 0:
        raise WireError(f"{name}: expected a non-negative integer")
    return value


def _node_id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NODE_ID_LENGTH:
        raise WireError(f"{name}: expected a node id")
    return value


def _bool(value: Any, name: str) -> bool:
    if type(value) is not bool:
        raise WireError(f"{name}: expected a boolean")
    return value


def _bytes(value: Any, name: str) -> bytes:
    if not isinstance(value, bytes):
        raise WireError(f"{name}: expected bytes")
    return value


def _entry(value: Any, name: str) -> Entry:
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise WireError(f"{name}: expected [index, term, kind, data]")
    index, term = _int(value[0], f"{name}.index"), _int(value[1], f"{name}.term")
    kind_value, data = _int(value[2], f"{name}.kind"), _bytes(value[3], f"{name}.data")
    try:
        kind = EntryKind(kind_value)
    except ValueError:
        raise WireError(f"{name}.kind: unknown entry kind {kind_value}") from None
    if kind is EntryKind.CONFIG:
        decode_membership(data)
    return Entry(index, term, kind, data)


def _entries(value: Any, name: str) -> tuple[Entry, ...]:
    if not isinstance(value, list | tuple):
        raise WireError(f"{name}: expected a list")
    return tuple(_entry(item, f"{name}[{position}]") for position, item in enumerate(value))


def _meta(value: Any, name: str) -> SnapshotMeta:
    if not isinstance(value, dict):
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

# kind -> (message class, [(field name, decoder)]), from the dataclass annotations.
_SCHEMAS = {
    cls.kind: (cls, [(field.name, _DECODERS[field.type]) for field in fields(cls)])
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
    return {name: _encode_value(getattr(message, name)) for name, _ in schema}


def from_wire(kind: str, body: Any) -> Message:
    """Decode and validate a body received with `kind`; raises WireError for anything invalid."""
    if not isinstance(kind, str) or kind not in _SCHEMAS:
        raise WireError(f"unknown raft message kind {kind!r}")
    if not isinstance(body, dict):
        raise WireError(f"{kind}: expected a map")
    cls, schema = _SCHEMAS[kind]
    values = {}
    for name, decode in schema:
        if name not in body:
            raise WireError(f"{kind}.{name}: missing")
        values[name] = decode(body[name], f"{kind}.{name}")
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
