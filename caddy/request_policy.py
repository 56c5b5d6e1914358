"""How a client sees a request through, without I/O: whom to ask, what answers mean, when to stop.

Shared by the blocking `Client` and the asyncio `AsyncClient`, so that both behave alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from caddy.errors import CaddyError, FencedOut, NoQuorum, Timeout, Unavailable
from caddy.replication.commands import CommandError, encode_kv
from caddy.replication.replies import (
    CODE_FIELD,
    ERROR_FIELD,
    ERROR_KIND,
    LEADER_FIELD,
    NO_QUORUM_CODE,
    OK_KIND,
    REDIRECT_KIND,
    RETRY_FIELD,
    TOO_LARGE_CODE,
    VALUE_FIELD,
    too_large_error,
)
from caddy.replication.state_machine import ErrorCode
from caddy.sizes import check_write, max_write_bytes
from caddy.wire import Envelope

ATTEMPT_TIMEOUT_S = 0.25  # after this long without an answer, ask every node
NO_LEADER_BACKOFF_S = 0.02  # an election is under way: ask again shortly


class RequestFailed(CaddyError):
    """The node answered with an error that retrying cannot fix (a malformed request)."""


class SessionExpired(RequestFailed):
    """The cluster keeps no session for this client any more (idle past the session TTL of log
    time, or evicted), so it cannot tell a retry from a new write and applied nothing. The client
    continues under a new session. `retried`: the write had been sent before, and an earlier
    attempt may have been applied: its outcome is unknown."""

    def __init__(self, message: str, retried: bool) -> None:
        if retried:
            message += "; the write was sent more than once: its outcome is unknown"
        super().__init__(message)
        self.retried = retried


@dataclass(slots=True)
class RequestPolicy:
    """One request's course. It goes to the known leader, or to every node at once when the
    leader is unknown or silent (followers answer with a redirect and only the leader acts, so a
    retried write is applied once); a redirect naming one other node is followed; while an
    election is under way, or the nodes that answered have no quorum, the client backs off
    briefly and asks every node."""

    node_ids: Sequence[str]
    target: str | None  # the node to ask next; None: every node
    deadline: float  # on the caller's monotonic clock
    timeout: float
    answered: bool = False
    backoff: float = 0.0  # how long to pause before the next attempt
    served_by: str | None = None
    value: Any = None
    attempts: int = 0  # made so far
    no_quorum: bool = False  # every answer of the latest answered attempt was `no_quorum`

    def attempt(self, now: float) -> tuple[list[str], float] | None:
        """The nodes to ask and how long to wait for them; None once the deadline passed."""
        remaining = self.deadline - now
        if remaining <= 0:
            return None
        self.attempts += 1
        asked = [self.target] if self.target is not None else list(self.node_ids)
        return asked, min(remaining, ATTEMPT_TIMEOUT_S)

    def settle(self, asked: Sequence[str], answers: dict[str, Envelope | None]) -> bool:
        """Take one attempt's answers; True when the request is done (see `served_by`, `value`).

        Raises RequestFailed for an answer that no retry can change.
        """
        self.backoff = 0.0
        replies = {node: answer for node, answer in answers.items() if answer is not None}
        if not replies:
            self.target = None
            return False
        self.answered = True
        for node, answer in replies.items():
            if answer.kind == OK_KIND:
                self.served_by, self.value = node, answer.body.get(VALUE_FIELD)
                return True
            if not retryable(answer):
                error = str(answer.body.get(ERROR_FIELD, answer.kind))
                code = answer.body.get(CODE_FIELD)
                if code == ErrorCode.SESSION_EXPIRED:
                    raise SessionExpired(error, retried=self.attempts > 1)
                if code == TOO_LARGE_CODE and (too_large := too_large_error(answer.body)):
                    raise too_large
                if code == ErrorCode.FENCED_OUT:
                    raise FencedOut(error)
                raise RequestFailed(error)
        self.no_quorum = all(
            answer.body.get(CODE_FIELD) == NO_QUORUM_CODE for answer in replies.values()
        )
        hints = {answer.body.get(LEADER_FIELD) for answer in replies.values()}
        hinted = [node for node in hints if node in self.node_ids and node not in asked]
        self.target = hinted[0] if len(hinted) == 1 else None
        if self.target is None:  # an election is under way, or the leader asked us to retry
            self.backoff = NO_LEADER_BACKOFF_S
        return False

    def failure(self) -> CaddyError:
        """The error to raise once `attempt` returned None."""
        if not self.answered:
            return Unavailable(f"no node answered within {self.timeout:g} s")
        if self.no_quorum:
            return NoQuorum(f"the nodes that answered had no quorum for {self.timeout:g} s")
        return Timeout(f"no leader completed the request within {self.timeout:g} s")


def check_size(kind: str, body: dict[str, Any], max_message_bytes: int) -> None:
    """Raise ValueTooLarge for a `kv.*` request whose write (or key, for a read) is over the
    largest the cluster takes (`caddy.sizes.max_write_bytes`), before anything is sent. A request
    that cannot be encoded at all is left for the node to refuse with its reason."""
    key = body["key"]
    if kind == "kv.get":
        try:
            check_write("the key", len(key.encode()), max_message_bytes)
        except UnicodeEncodeError:
            pass
        return
    op = kind.removeprefix("kv.")
    value, expected = (body["new"] if op == "cas" else body.get("value")), body.get("expected")
    bound = _packed_bound(key) + _packed_bound(value) + _packed_bound(expected)
    if bound + _WRITE_FRAMING_BYTES <= max_write_bytes(max_message_bytes):
        return  # the common case, without packing the write a second time
    try:
        payload = encode_kv(op, key, value, expected)
    except CommandError:
        return
    check_write("the write", len(payload), max_message_bytes)


_WRITE_FRAMING_BYTES = 16  # encode_kv's array and op, at most
_UNBOUNDED = 1 << 62


def _packed_bound(value: Any) -> int:
    """At most what msgpack makes of a scalar (containers: more than any limit, to be packed)."""
    kind = type(value)
    if kind is str:
        return 4 * len(value) + 5
    if kind is bytes:
        return len(value) + 5
    if value is None or kind is bool or kind is int or kind is float:
        return 9
    return _UNBOUNDED


def retryable(answer: Envelope) -> bool:
    return answer.kind == REDIRECT_KIND or (
        answer.kind == ERROR_KIND and answer.body.get(RETRY_FIELD) is True
    )


def decisive(answers: dict[str, Envelope | None]) -> bool:
    """Whether an answer settles the request: a success or a definite failure."""
    return any(a is not None and (a.kind == OK_KIND or not retryable(a)) for a in answers.values())


def answer_body(envelope: Envelope) -> dict[str, Any]:
    """The body of a `client.*` answer; RequestFailed when the node refused the request."""
    if envelope.kind == "client.error":
        raise RequestFailed(str(envelope.body.get("error", "unknown error")))
    return envelope.body


def leader_of(statuses: dict[str, dict[str, Any] | None]) -> str | None:
    """The node that leads in the highest term any answering node reports, if any."""
    leaders = [
        (status.get("term", 0), node_id)
        for node_id, status in statuses.items()
        if status is not None and status.get("state") == "leader"
    ]
    return max(leaders)[1] if leaders else None
