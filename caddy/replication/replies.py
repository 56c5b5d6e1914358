"""Replies of the key-value service: the kinds a node answers `kv.*` requests with, their bodies.

Spelled once here, so that the node that answers and the clients that read the answers agree.
"""

from __future__ import annotations

from typing import Any

from caddy.errors import ValueTooLarge

OK_KIND = "kv.ok"  # the request took effect (a write) or was served (a read)
ERROR_KIND = "kv.error"  # it did not, or its outcome is unknown (see RETRY_FIELD)
REDIRECT_KIND = "kv.redirect"  # this node does not lead: ask the leader it names

VALUE_FIELD = "value"  # kv.ok: the operation's value (None when it has none)
ERROR_FIELD = "error"  # kv.error: one line for humans
RETRY_FIELD = "retry"  # kv.error: True when a retry may succeed (the outcome is unknown)
CODE_FIELD = "code"  # kv.error: the state machine's ErrorCode, when it refused the write
LEADER_FIELD = "leader"  # kv.redirect: the leader this node knows of, or None
SIZE_FIELD = "size"  # kv.error with TOO_LARGE_CODE: the write's size in bytes
LIMIT_FIELD = "limit"  # ... and the largest write the cluster takes
MAX_MESSAGE_FIELD = "max_message_bytes"  # ... and the transport's limit it derives from

# kv.error's code for a write over the largest size: refused before it was proposed.
TOO_LARGE_CODE = "value_too_large"
# kv.error's code from a node that cannot reach a quorum: nothing was proposed; another node may
# serve the request (so `retry` is True).
NO_QUORUM_CODE = "no_quorum"


def ok_body(value: Any) -> dict[str, Any]:
    return {VALUE_FIELD: value}


def error_body(error: str, *, retry: bool) -> dict[str, Any]:
    return {ERROR_FIELD: error, RETRY_FIELD: retry}


def refusal_body(error: str, code: Any) -> dict[str, Any]:
    """The state machine refused the write (`code`, its ErrorCode): a retry cannot change that."""
    return {ERROR_FIELD: error, CODE_FIELD: code, RETRY_FIELD: False}


def no_quorum_body() -> dict[str, Any]:
    return {
        ERROR_FIELD: "this node cannot reach a quorum",
        CODE_FIELD: NO_QUORUM_CODE,
        RETRY_FIELD: True,
    }


def too_large_body(error: ValueTooLarge) -> dict[str, Any]:
    """A write over the largest size, refused before it was proposed: retrying cannot help."""
    return {
        ERROR_FIELD: str(error),
        CODE_FIELD: TOO_LARGE_CODE,
        RETRY_FIELD: False,
        SIZE_FIELD: error.size,
        LIMIT_FIELD: error.limit,
        MAX_MESSAGE_FIELD: error.max_message_bytes,
    }


def too_large_error(body: dict[str, Any]) -> ValueTooLarge | None:
    """The error a `too_large_body` stands for; None when its fields are not all ints."""
    size, limit, most = body.get(SIZE_FIELD), body.get(LIMIT_FIELD), body.get(MAX_MESSAGE_FIELD)
    if type(size) is not int or type(limit) is not int or type(most) is not int:
        return None
    return ValueTooLarge("the write", size, limit, most)


def redirect_body(leader: str | None) -> dict[str, Any]:
    return {LEADER_FIELD: leader}
