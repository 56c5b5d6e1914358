"""Replicated state: the StateMachine interface, the key-value machine and exactly-once sessions.

Pure code: the RaftActor feeds committed entries to `apply` and snapshots through `snapshot`.
"""

from caddy.replication.commands import (
    Command,
    CommandError,
    KvCommand,
    KvOp,
    decode_batch,
    decode_command,
    decode_kv,
    encode_batch,
    encode_command,
    encode_kv,
)
from caddy.replication.kv import KeyValueStore
from caddy.replication.sessions import Session, SessionStateMachine
from caddy.replication.state_machine import (
    ErrorCode,
    SnapshotError,
    StateMachine,
    error_result,
    ok_result,
)

__all__ = [
    "Command",
    "CommandError",
    "ErrorCode",
    "KeyValueStore",
    "KvCommand",
    "KvOp",
    "Session",
    "SessionStateMachine",
    "SnapshotError",
    "StateMachine",
    "decode_batch",
    "decode_command",
    "decode_kv",
    "encode_batch",
    "encode_command",
    "encode_kv",
    "error_result",
    "ok_result",
]
