"""Client requests of the key-value service: `kv.*` frames in, log commands and replies out.

Pure translation, so that the RaftActor holds no service logic; every field is checked here
(exact types, session numbers in 0..MAX_INT64, values within `caddy.bounds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from caddy.bounds import MAX_INT64, describe
from caddy.errors import CaddyError, WireError
from caddy.replication.commands import CommandError, check_command, encode_batch, encode_kv
from caddy.replication.locks import ACQUIRE, FENCE, RELEASE, RENEW, encode_lock
from caddy.replication.registry import encode_registry
from caddy.replication.replies import ERROR_KIND, OK_KIND, ok_body, refusal_body
from caddy.sizes import batched_write_bytes
from caddy.wire import require_fields

READ_KIND = "kv.get"
LOCK_WAIT_KIND = "kv.lock_wait"  # not a write: wait (a while) at the leader for a queued lock
_READ_FIELDS = {"key": str}
_LOCK_WAIT_FIELDS = {"name": str, "owner": str}
_SESSION_FIELDS = {"client": str, "seq": int, "ack": int}
_KV_FIELDS = {
    "kv.put": {"key": str, "value": object},
    "kv.delete": {"key": str},
    "kv.cas": {"key": str, "expected": object, "new": object},
}
_LOCK_FIELDS = {
    "kv.lock": {"name": str, "owner": str, "ttl_ms": int, "wait_ms": int},
    "kv.renew": {"name": str, "owner": str, "token": int},
    "kv.unlock": {"name": str, "owner": str},
}
REGISTRY_KIND = "kv.backend"  # a change of the service registry (caddy.replication.registry)
_REGISTRY_FIELDS = {
    REGISTRY_KIND: {"op": str, "service": str, "backend": str, "address": str, "weight": int}
}
_WRITE_FIELDS: dict[str, dict[str, Any]] = {
    kind: {**fields, **_SESSION_FIELDS}
    for kind, fields in {**_KV_FIELDS, **_LOCK_FIELDS, **_REGISTRY_FIELDS}.items()
}
FENCE_FIELD = "fence"  # optional on kv.put, kv.delete and kv.cas: [lock name, token]


class RequestError(CaddyError):
    """A client request that is malformed; retrying it cannot help."""


class ClientRequest(NamedTuple):
    """One validated request. Writes carry the client's session (id, seq, acknowledged-below).

    A NamedTuple for the reason `caddy.replication.commands.Command` is one."""

    op: str  # get | put | delete | cas | lock | renew | unlock | lock_wait | backend
    key: str  # the lock's name for lock requests; SERVICE/BACKEND for registry changes
    payload: bytes = b""  # the encoded state machine operation (writes only)
    client_id: str = ""
    seq: int = 0
    ack_below: int = 0
    owner: str = ""  # lock_wait: whose wait

    @property
    def is_read(self) -> bool:
        return self.op == "get"

    @property
    def size(self) -> int:
        """At most what this write adds to a log entry, in bytes."""
        return batched_write_bytes(len(self.payload), len(self.client_id))


def writes_entry(writes: Sequence[ClientRequest], log_time_ms: int) -> bytes:
    """The log entry for writes proposed together, stamped with the leader's clock."""
    commands = [(w.client_id, w.seq, w.ack_below, w.payload) for w in writes]
    return encode_batch(log_time_ms, commands, commands_checked=True)  # by parse_request


def parse_request(kind: str, body: dict[str, Any]) -> ClientRequest:
    """Validate a `kv.*` request; RequestError names what is wrong (never showing the value).

    A value, and a cas's expected and new, may nest at most `caddy.bounds.MAX_VALUE_DEPTH`
    levels (checked where the payload is encoded); keys and values are bounded in size by the
    frame's."""
    try:
        if type(body) is not dict:
            raise RequestError("a request body must be a map")
        if kind == READ_KIND:
            require_fields(body, _READ_FIELDS)
            return ClientRequest("get", body["key"])
        if kind == LOCK_WAIT_KIND:
            require_fields(body, _LOCK_WAIT_FIELDS)
            return ClientRequest("lock_wait", body["name"], owner=body["owner"])
        fields = _WRITE_FIELDS.get(kind) if type(kind) is str else None
        if fields is None:
            raise RequestError(f"unknown request {describe(kind)}")
        require_fields(body, fields)
        seq, ack = body["seq"], body["ack"]
        if not body["client"] or not 1 <= seq <= MAX_INT64 or not 0 <= ack <= seq:
            raise RequestError("a write needs a client id, a seq >= 1 and 0 <= ack <= seq")
        op = kind.removeprefix("kv.")
        # Encoded here, once: a value that cannot be encoded is refused now, not in the log.
        if kind in _LOCK_FIELDS:
            key, payload = body["name"], _lock_payload(op, body)
        elif kind == REGISTRY_KIND:
            key = f"{body['service']}/{body['backend']}"
            payload = encode_registry(
                body["op"], body["service"], body["backend"], body["address"], body["weight"]
            )
        else:
            key, payload = body["key"], _kv_payload(op, body)
        # The session fields are checked as the leader will stamp them (any clock reading).
        check_command(body["client"], body["seq"], body["ack"], 0, payload)
        return ClientRequest(op, key, payload, body["client"], body["seq"], body["ack"])
    except (WireError, CommandError) as error:
        raise RequestError(str(error)) from error


def _kv_payload(op: str, body: dict[str, Any]) -> bytes:
    value = body["new"] if op == "cas" else body.get("value")
    payload = encode_kv(op, body["key"], value, body.get("expected"))
    fence = body.get(FENCE_FIELD)
    if fence is None:
        return payload
    if type(fence) is not list or len(fence) != 2:
        raise RequestError("a fence is [lock name, token]")
    return encode_lock(FENCE, fence[0], "", fence[1], payload)


def _lock_payload(op: str, body: dict[str, Any]) -> bytes:
    name, owner = body["name"], body["owner"]
    if op == "lock":
        return encode_lock(ACQUIRE, name, owner, body["ttl_ms"], body["wait_ms"])
    if op == "renew":
        return encode_lock(RENEW, name, owner, body["token"])
    return encode_lock(RELEASE, name, owner)


def result_reply(result: Any) -> tuple[str, dict[str, Any]]:
    """The reply to a client for a state machine result (see `state_machine.ok_result`)."""
    if isinstance(result, dict):
        ok = result.get("ok")
        if ok is True:  # the common case first: this runs for every write
            return OK_KIND, ok_body(result.get("value"))
        if ok is False:
            code = result.get("error")  # the ErrorCode, for clients to act on
            return ERROR_KIND, refusal_body(f"{code}: {result.get('detail')}", code)
    return OK_KIND, ok_body(result)
