"""The interface of a replicated state machine, and the shape of the results its commands return.

Every replica applies the same committed commands in the same order, so a machine must be
deterministic: no clocks, no randomness, no iteration over unordered collections.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from caddy.errors import CaddyError
from caddy.replication.packing import pack, unpack


@runtime_checkable
class StateMachine(Protocol):
    """What a user implements to replicate their own state through Raft.

    `apply` returns a msgpack-able result that goes back to the client that proposed the command.
    A command the machine cannot make sense of should yield an error result (see `error_result`),
    not raise: an exception would be answered as `apply_failed` by `SessionStateMachine`.

    Optionally, `snapshot_view() -> Callable[[], bytes]` takes a cheap consistent view of the
    state and returns a function that makes `snapshot()`'s bytes from it later, on another
    thread, while `apply` goes on: a node then packs a large state without pausing replication
    (`KeyValueStore` has one). Without it, `snapshot()` runs on the Raft thread.
    """

    def apply(self, command: bytes) -> Any:
        """Apply one committed command and return its result."""
        ...

    def snapshot(self) -> bytes:
        """The whole state as bytes; `restore` of them rebuilds an identical machine."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's; raise SnapshotError and keep the old state
        when the bytes are not a snapshot of this machine."""
        ...


class SnapshotError(CaddyError):
    """Bytes handed to `restore` that are not a snapshot of this state machine."""


class ErrorCode(StrEnum):
    """The `error` field of an error result."""

    MALFORMED = "malformed"  # the log command's session envelope is not well formed
    STALE = "stale"  # seq below the session's window: the client promised never to retry it
    SESSION_EXPIRED = "session_expired"  # the session expired or was evicted; use a new client id
    INVALID = "invalid"  # the payload is not a valid operation for the state machine
    APPLY_FAILED = "apply_failed"  # the inner state machine raised
    FENCED_OUT = "fenced_out"  # a fenced write whose token no longer holds the lock


# Results are plain maps so they cross msgpack unchanged:
#   success: {"ok": True, "value": <operation's value, None when it has none>}
#   failure: {"ok": False, "error": <ErrorCode value>, "detail": <one line for humans>}


def ok_result(value: Any = None) -> dict[str, Any]:
    """The result of an operation that took effect (or, for cas, was decided)."""
    return {"ok": True, "value": value}


def error_result(code: ErrorCode, detail: str) -> dict[str, Any]:
    """The result of a command that did not take effect; `detail` must be the same on every node."""
    return {"ok": False, "error": code.value, "detail": detail}


def inner_snapshot_view(machine: StateMachine) -> Callable[[], bytes]:
    """A function making `machine.snapshot()`'s bytes later: its `snapshot_view()` when it has
    one, else the bytes taken now (for a layer that wraps another machine)."""
    view = _snapshot_view_of(machine)
    if view is not None:
        return view()
    data = machine.snapshot()
    return lambda: data


def _snapshot_view_of(machine: StateMachine) -> Callable[[], Callable[[], bytes]] | None:
    """`machine.snapshot_view`, unless a subclass overrides `snapshot()` below the class that
    defines the view (the view would then make the base class's bytes, not `snapshot()`'s)."""
    for cls in type(machine).__mro__:
        if "snapshot_view" in vars(cls):
            return machine.snapshot_view  # type: ignore[attr-defined]
        if "snapshot" in vars(cls):
            return None
    return None


# ----- layers: a machine wrapping another, its snapshot holding both -------------------------


def layer_snapshot_view(
    tag: str, version: int, state: Any, inner: StateMachine
) -> Callable[[], bytes]:
    """The snapshot bytes of a layer whose own `state` (taken now, msgpack-able) wraps the
    inner machine's (`inner_snapshot_view`): `[tag, version, state, inner bytes]`."""
    inner_view = inner_snapshot_view(inner)
    return lambda: pack([tag, version, state, inner_view()])


def split_layer_snapshot(data: bytes, tag: str, version: int) -> tuple[Any, bytes] | None:
    """(the layer's state, the inner machine's bytes) of a `layer_snapshot_view` snapshot, or
    None when `data` is the inner machine's alone (written before the layer existed);
    SnapshotError for a snapshot of the layer in another version."""
    try:
        fields = unpack(data, SnapshotError)
    except SnapshotError:
        return None
    if type(fields) is not list or len(fields) != 4 or fields[0] != tag:
        return None
    _, found, state, inner = fields
    if found != version or type(inner) is not bytes:
        raise SnapshotError(f"{tag} snapshot: unknown version")
    return state, inner
