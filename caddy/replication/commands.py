"""The byte formats of replicated log commands: the session envelope and the key-value payload.

Encoders check what callers hand them; decoders treat the log as untrusted and raise CommandError
(with a fixed, node-independent message) for anything that is not exactly well formed.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, NamedTuple

from caddy.bounds import MAX_NAME_LENGTH, SCALAR_TYPES, value_problem
from caddy.errors import CaddyError
from caddy.replication.packing import pack, unpack

ENVELOPE_VERSION = 1
BATCH_VERSION = 2
MAX_CLIENT_ID_LENGTH = MAX_NAME_LENGTH


class CommandError(CaddyError):
    """A log command (envelope or payload) that is not well formed."""


class Command(NamedTuple):
    """One session envelope, as the leader stamped it.

    A NamedTuple rather than a frozen dataclass: equally immutable, at a third of the construction
    cost, and one is built for every applied entry.

    `client_id` "" means no session (applied without deduplication; seq and ack_below are 0).
    Otherwise `seq` counts the client's writes from 1 and `ack_below` is the lowest seq whose
    answer the client has not received yet: it promises never to retry anything below it.
    `log_time_ms` is the leader's clock when it proposed the command.
    """

    client_id: str
    seq: int
    ack_below: int
    log_time_ms: int
    payload: bytes


def encode_command(
    client_id: str, seq: int, log_time_ms: int, payload: bytes, ack_below: int = 0
) -> bytes:
    """The log entry data for one client write; raises CommandError for invalid fields."""
    check_command(client_id, seq, ack_below, log_time_ms, payload)
    return _pack_checked([ENVELOPE_VERSION, client_id, seq, ack_below, log_time_ms, payload])


def decode_command(data: bytes) -> Command:
    """Parse and validate a log entry's data; CommandError for anything malformed."""
    return _envelope_command(unpack(data, CommandError))


def _envelope_command(fields: Any) -> Command:
    if type(fields) is not list or len(fields) != 6:
        raise CommandError("envelope: expected a list of 6 fields")
    version, client_id, seq, ack_below, log_time_ms, payload = fields
    if type(version) is not int or version != ENVELOPE_VERSION:
        raise CommandError("envelope: unknown version")
    check_command(client_id, seq, ack_below, log_time_ms, payload)
    return Command(client_id, seq, ack_below, log_time_ms, payload)


def encode_batch(
    log_time_ms: int,
    commands: Sequence[Sequence[Any]],
    *,
    commands_checked: bool = False,
) -> bytes:
    """The log entry data for writes proposed together, as (client_id, seq, ack_below, payload).

    One entry per batch rather than per write: every replica then stores, sends and decodes one
    entry for many writes. Raises CommandError for invalid fields; `commands_checked` skips the
    per-command check for commands that passed `check_command` already (any log time).
    """
    if type(log_time_ms) is not int or log_time_ms < 0:
        raise CommandError("log_time_ms: expected a non-negative integer")
    if not commands_checked:
        for client_id, seq, ack_below, payload in commands:
            check_command(client_id, seq, ack_below, log_time_ms, payload)
    return _pack_checked([BATCH_VERSION, log_time_ms, commands])  # tuples pack as arrays too


def decode_batch(data: bytes) -> tuple[int, list[Command | CommandError]]:
    """Parse a batch entry: its log time and one Command per write, or the CommandError of a
    malformed write in its place (the others stand). A malformed batch raises CommandError.

    A single-command envelope (`encode_command`, the entry format before batches) is a batch of
    one, so that logs written by earlier versions replay to the same state.
    """
    fields = unpack(data, CommandError)
    if type(fields) is list and len(fields) == 6:
        command = _envelope_command(fields)
        return command.log_time_ms, [command]
    if type(fields) is not list or len(fields) != 3:
        raise CommandError("batch: expected [version, log_time_ms, commands]")
    version, log_time_ms, items = fields
    if type(version) is not int or version != BATCH_VERSION:
        raise CommandError("batch: unknown version")
    if type(log_time_ms) is not int or log_time_ms < 0:
        raise CommandError("log_time_ms: expected a non-negative integer")
    if type(items) is not list:
        raise CommandError("batch: expected a list of commands")
    return log_time_ms, [_batch_item(item, log_time_ms) for item in items]


def _batch_item(item: Any, log_time_ms: int) -> Command | CommandError:
    if type(item) is not list or len(item) != 4:
        return CommandError("batch: expected [client_id, seq, ack_below, payload]")
    client_id, seq, ack_below, payload = item
    try:
        check_command(client_id, seq, ack_below, log_time_ms, payload)
    except CommandError as error:
        return error
    return Command(client_id, seq, ack_below, log_time_ms, payload)


def check_command(client_id: Any, seq: Any, ack_below: Any, log_time_ms: Any, payload: Any) -> None:
    """Raise CommandError unless the fields make a valid command (see `Command`)."""
    if type(client_id) is not str or len(client_id) > MAX_CLIENT_ID_LENGTH:
        raise CommandError(f"client_id: expected a string of at most {MAX_CLIENT_ID_LENGTH} chars")
    if type(seq) is not int or type(ack_below) is not int:
        raise CommandError("seq, ack_below: expected integers")
    if type(log_time_ms) is not int or log_time_ms < 0:
        raise CommandError("log_time_ms: expected a non-negative integer")
    if type(payload) is not bytes:
        raise CommandError("payload: expected bytes")
    if client_id:
        if seq < 1 or not 0 <= ack_below <= seq:
            raise CommandError("seq, ack_below: expected 1 <= seq and 0 <= ack_below <= seq")
    elif seq or ack_below:
        raise CommandError("seq, ack_below: must be 0 without a session")


class KvOp(StrEnum):
    """The write operations of the key-value state machine."""

    PUT = "put"
    DELETE = "delete"
    CAS = "cas"


_KV_OPS = {op.value: op for op in KvOp}


class KvCommand(NamedTuple):
    """One key-value write. `value` is the new value (put, cas); `expected` is cas's guard.

    A NamedTuple for the same reason as `Command`.
    """

    op: KvOp
    key: str
    value: Any = None
    expected: Any = None


def encode_kv(op: str, key: str, value: Any = None, expected: Any = None) -> bytes:
    """The payload of a key-value write; raises CommandError for invalid operations or values."""
    _check_kv(op, key, value, expected)
    return _pack_checked([op, key, value, expected])


def decode_kv(payload: bytes) -> KvCommand:
    """Parse and validate a key-value payload; CommandError for anything malformed."""
    fields = unpack(payload, CommandError)
    if type(fields) is not list or len(fields) != 4:
        raise CommandError("kv: expected [op, key, value, expected]")
    op, key, value, expected = fields
    _check_kv(op, key, value, expected)
    return KvCommand(_KV_OPS[op], key, value, expected)


def _check_kv(op: Any, key: Any, value: Any, expected: Any) -> None:
    """Raise CommandError unless the fields make a valid write. Values and cas guards are held
    to `caddy.bounds.value_problem` (MAX_VALUE_DEPTH levels) here, so both the leader, before it
    proposes, and every replica, before it applies, bound them: the state machine never sees a
    value deeper than that, whatever a log entry holds."""
    if not isinstance(op, str) or op not in _KV_OPS:  # a KvOp is a str
        raise CommandError("kv: op must be one of put, delete, cas")
    if not isinstance(key, str):
        raise CommandError("kv: key must be a string")
    if type(value) not in SCALAR_TYPES and (problem := value_problem(value)) is not None:
        raise CommandError(f"kv: value: {problem}")  # scalars, the common case, skip the walk
    if type(expected) not in SCALAR_TYPES and (problem := value_problem(expected)) is not None:
        raise CommandError(f"kv: expected: {problem}")
    # Plain string comparisons: an Enum member lookup costs more than the rest of this check.
    if expected is not None and op != "cas":
        raise CommandError(f"kv: {op} takes no expected value")
    if value is not None and op == "delete":
        raise CommandError("kv: delete takes no value")


def _pack_checked(value: Any) -> bytes:
    try:
        return pack(value)
    except (TypeError, ValueError, OverflowError) as error:
        raise CommandError(f"cannot encode: {error}") from error
