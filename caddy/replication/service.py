"""The leader's bookkeeping of key-value requests: which clients wait for which log entry or read.

Pure: the node's actor hands in requests, log positions, commits, leadership and the time, and
sends the replies this accumulates; no protocol decision is left in the actor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from caddy.errors import ValueTooLarge
from caddy.replication.locks import LockChange, LockView
from caddy.replication.replies import (
    ERROR_KIND,
    OK_KIND,
    REDIRECT_KIND,
    error_body,
    no_quorum_body,
    ok_body,
    redirect_body,
    too_large_body,
)
from caddy.replication.requests import (
    ClientRequest,
    RequestError,
    parse_request,
    result_reply,
    writes_entry,
)
from caddy.sizes import max_write_bytes

logger = logging.getLogger(__name__)

# Writes proposed together share a log entry up to this size (or the largest write, when that is
# smaller); a larger write gets its own. Not a setting: it only sets how finely a batch is cut
# (appends are bounded by raft.max_append_bytes), and no guarantee a user relies on changes with it.
MAX_ENTRY_BYTES = 256 * 1024
NO_READS = "this node's state machine has no read(key) method"

Route = TypeVar("Route")  # where a reply goes; opaque to the service


class Proposal(NamedTuple, Generic[Route]):
    """Log entries to propose together, and the clients waiting for each, in the order of its
    writes."""

    entries: list[bytes]
    routes: list[list[Route]]


class _PendingEntry(NamedTuple, Generic[Route]):
    """The clients waiting for one proposed entry; past `deadline` (monotonic) they are told the
    outcome is unknown."""

    routes: list[Route]
    term: int
    deadline: float


class KeyValueService(Generic[Route]):
    """Turns `kv.*` requests into proposals and read rounds, and commits, confirmed reads,
    leadership changes and timeouts into replies (`take_replies`), for one node.

    Writes wait in a queue until `take_proposal`, then by log index until committed. Reads wait
    for a ReadIndex round (`take_read_round`), then for its confirmation (`read_confirmed`), then
    until the state machine applied the read index (`serve_reads`)."""

    __slots__ = (
        "_node_id",
        "request_timeout_s",
        "_read",
        "_max_entry_bytes",
        "_max_message_bytes",
        "_max_write_bytes",
        "_queued_routes",
        "_queued_writes",
        "_writes",
        "_pending_writes",
        "_reads",
        "_reads_in_flight",
        "_reads_ready",
        "_read_rounds",
        "_replies",
        "has_quorum",
        "draining",
        "_lock_view",
        "_lock_waits",
        "_older_lock_waits",
    )

    def __init__(
        self,
        *,
        node_id: str,
        request_timeout_s: float,
        read: Callable[[str], Any] | None,
        max_message_bytes: int,
        max_entry_bytes: int = MAX_ENTRY_BYTES,
        lock_view: Callable[[str, str], tuple[LockView, int]] | None = None,
    ) -> None:
        """`read`: the state machine's `read(key)`, or None when it has none (reads are then
        refused). `max_message_bytes`: the transport's; writes over `caddy.sizes.max_write_bytes`
        of it are refused before they are proposed. `lock_view(name, owner)`: where a lock's
        waiter stands in the applied state now (`LockTable.view`), with the leader's clock in
        ms; None: no lock waits."""
        self._node_id = node_id  # for log records
        self.request_timeout_s = request_timeout_s
        self._read = read
        self._max_write_bytes = max_write_bytes(max_message_bytes)
        self._max_entry_bytes = min(max_entry_bytes, self._max_write_bytes)
        self._max_message_bytes = max_message_bytes
        # Writes not yet proposed, as two parallel lists: no tuple per write
        self._queued_routes: list[Route] = []
        self._queued_writes: list[ClientRequest] = []
        self._writes: dict[int, _PendingEntry[Route]] = {}  # by log index
        self._pending_writes = 0  # the clients in `_writes`
        self._reads: list[tuple[Route, str]] = []  # waiting for a read round to start
        self._reads_in_flight: dict[bytes, list[tuple[Route, str]]] = {}  # by round context
        self._reads_ready: list[tuple[int, list[tuple[Route, str]]]] = []  # by read index
        self._read_rounds = 0
        self._replies: list[tuple[Route, str, dict[str, Any]]] = []
        # This node's quorum view (the FencingActor's): without quorum, writes and reads are
        # answered `no_quorum` at once instead of waiting for a commit or a leader that cannot be.
        self.has_quorum = True
        # A draining node takes no new request: each is redirected (by a draining leader to no
        # one: it is handing leadership over), while those already queued finish.
        self.draining = False
        self._lock_view = lock_view
        # `kv.lock_wait`s parked until their waiter is granted or stops waiting, by (name, owner);
        # those parked before the last `expire` are answered "still queued" at the next one, so
        # a client re-asks within two expiry rounds and finds a new leader if this one went.
        self._lock_waits: dict[tuple[str, str], Route] = {}
        self._older_lock_waits: dict[tuple[str, str], Route] = {}

    @property
    def pending_writes(self) -> int:
        """Client writes proposed and waiting for their commit."""
        return self._pending_writes

    def take_replies(self) -> list[tuple[Route, str, dict[str, Any]]]:
        """Every reply since the last call, in order, for one `reply_many`."""
        replies, self._replies = self._replies, []
        return replies

    # ----- requests ---------------------------------------------------------------------------

    def request(
        self,
        route: Route,
        kind: str,
        body: dict[str, Any],
        *,
        leader: bool,
        leader_hint: str | None,
    ) -> None:
        """A client's `kv.*` request: answered at once (malformed, no quorum, not the leader,
        no reads) or queued."""
        try:
            request = parse_request(kind, body)
        except RequestError as error:
            self._replies.append((route, ERROR_KIND, error_body(str(error), retry=False)))
            return
        if (size := len(request.payload)) > self._max_write_bytes:  # a read's payload is empty
            error = ValueTooLarge("the write", size, self._max_write_bytes, self._max_message_bytes)
            self._replies.append((route, ERROR_KIND, too_large_body(error)))
            return
        if not self.has_quorum:
            self._replies.append((route, ERROR_KIND, no_quorum_body()))
            return
        if not leader or self.draining:
            hint = None if leader else leader_hint
            self._replies.append((route, REDIRECT_KIND, redirect_body(hint)))
            return
        if request.op == "lock_wait":
            self._park_lock_wait(route, request.key, request.owner)
        elif request.is_read:
            if self._read is None:
                self._replies.append((route, ERROR_KIND, error_body(NO_READS, retry=False)))
                return
            self._reads.append((route, request.key))
        else:
            self._queued_routes.append(route)
            self._queued_writes.append(request)

    # ----- writes -----------------------------------------------------------------------------

    def take_proposal(self, log_time_ms: int) -> Proposal[Route] | None:
        """Every write queued since the last proposal, for one append (one round trip), in as few
        log entries as `max_entry_bytes` allows, stamped with the leader's clock; None if none."""
        writes = self._queued_writes
        if not writes:
            return None
        routes = self._queued_routes
        self._queued_writes, self._queued_routes = [], []
        entries: list[bytes] = []
        groups: list[list[Route]] = []
        start = size = 0
        limit = self._max_entry_bytes
        for end, write in enumerate(writes):
            write_size = write.size
            if end > start and size + write_size > limit:
                entries.append(writes_entry(writes[start:end], log_time_ms))
                groups.append(routes[start:end])
                start, size = end, 0
            size += write_size
        if start == 0:  # the usual case: one entry, no copies
            entries.append(writes_entry(writes, log_time_ms))
            groups.append(routes)
        else:
            entries.append(writes_entry(writes[start:], log_time_ms))
            groups.append(routes[start:])
        return Proposal(entries, groups)

    def proposed(self, proposal: Proposal[Route], first_index: int, term: int, now: float) -> None:
        """The core appended `proposal`'s entries from `first_index` on, in `term`; `now` is the
        monotonic clock (the writes' deadlines run from it)."""
        deadline = now + self.request_timeout_s
        writes = self._writes
        for index, routes in enumerate(proposal.routes, first_index):
            writes[index] = _PendingEntry(routes, term, deadline)
            self._pending_writes += len(routes)

    def proposal_refused(self, proposal: Proposal[Route], leader_hint: str | None) -> None:
        """The core would not take `proposal` (not the leader, or a transfer under way)."""
        redirect = redirect_body(leader_hint)
        self._replies.extend(
            (route, REDIRECT_KIND, redirect) for routes in proposal.routes for route in routes
        )

    def committed(self, index: int, term: int, results: list[Any]) -> None:
        """The entry at `index`, of `term`, is applied; `results` are the state machine's for
        its writes (`apply_batch`), [] for an entry that is not a command."""
        pending = self._writes.pop(index, None)
        if pending is None:
            return
        routes = pending.routes
        self._pending_writes -= len(routes)
        replies = self._replies
        if pending.term != term:  # another leader's entry took this index
            error = error_body("leadership changed", retry=True)
            replies.extend((route, ERROR_KIND, error) for route in routes)
        elif len(results) != len(routes):  # not the entry proposed: never expected
            logger.error("node %s: entry %d does not match its writes", self._node_id, index)
            error = error_body("entry does not match its writes", retry=False)
            replies.extend((route, ERROR_KIND, error) for route in routes)
        else:
            append = replies.append
            for route, result in zip(routes, results, strict=True):
                kind, body = result_reply(result)
                append((route, kind, body))

    def expire(self, now: float) -> None:
        """Writes not committed by their deadline (`now`, monotonic, past it): the outcome is
        unknown, so the client may retry."""
        self._age_lock_waits()
        expired = [index for index, pending in self._writes.items() if pending.deadline < now]
        if not expired:
            return
        error = error_body("request timeout", retry=True)
        for index in expired:
            routes = self._writes.pop(index).routes
            self._pending_writes -= len(routes)
            self._replies.extend((route, ERROR_KIND, error) for route in routes)

    def fail_pending(self, reason: str) -> None:
        """Answer every waiting client (leadership lost, node stopping): the outcome of a write
        is unknown, so they retry."""
        routes = [route for pending in self._writes.values() for route in pending.routes]
        routes.extend(self._queued_routes)
        routes.extend(route for route, _ in self._reads)
        routes.extend(route for _, reads in self._reads_ready for route, _ in reads)
        routes.extend(route for reads in self._reads_in_flight.values() for route, _ in reads)
        routes.extend(self._lock_waits.values())
        routes.extend(self._older_lock_waits.values())
        self._lock_waits.clear()
        self._older_lock_waits.clear()
        self._writes.clear()
        self._pending_writes = 0
        self._queued_routes.clear()
        self._queued_writes.clear()
        self._reads.clear()
        self._reads_ready.clear()
        self._reads_in_flight.clear()
        error = error_body(reason, retry=True)
        self._replies.extend((route, ERROR_KIND, error) for route in routes)

    # ----- reads ------------------------------------------------------------------------------

    def take_read_round(self) -> bytes | None:
        """The context of a ReadIndex round for every read queued since the last round (one round
        confirms leadership for them all); None if no read waits."""
        if not self._reads:
            return None
        self._read_rounds += 1
        context = self._read_rounds.to_bytes(8, "big")
        self._reads_in_flight[context] = self._reads
        self._reads = []
        return context

    def read_round_refused(self, context: bytes, leader_hint: str | None) -> None:
        """The core would not start the round (not the leader)."""
        redirect = redirect_body(leader_hint)
        reads = self._reads_in_flight.pop(context, [])
        self._replies.extend((route, REDIRECT_KIND, redirect) for route, _ in reads)

    def read_confirmed(self, context: bytes, index: int) -> None:
        """The round's leadership is confirmed (a `Ready.read_states` item): its reads may be
        served once the state machine applied `index`."""
        reads = self._reads_in_flight.pop(context, None)
        if reads:
            self._reads_ready.append((index, reads))

    def serve_reads(self, applied_index: int) -> None:
        """Answer the confirmed reads whose read index the state machine applied."""
        ready = self._reads_ready
        if not ready:
            return
        read = self._read
        assert read is not None  # no read is queued without it
        append = self._replies.append
        still_waiting = []
        for index, reads in ready:
            if index <= applied_index:
                for route, key in reads:
                    append((route, OK_KIND, ok_body(read(key))))
            else:
                still_waiting.append((index, reads))
        self._reads_ready = still_waiting

    # ----- lock waits ---------------------------------------------------------------------------

    def locks_changed(self, changes: list[LockChange], now_ms: int) -> None:
        """Applied commands granted these waiters their lock or ended their wait (every
        replica has them; only the leader has parked waits). `now_ms`: the leader's clock, from
        which a grant's remaining lease is told."""
        for change in changes:
            key = (change.name, change.owner)
            route = self._lock_waits.pop(key, None) or self._older_lock_waits.pop(key, None)
            if route is None:
                continue
            if change.token is None:
                self._replies.append((route, OK_KIND, ok_body(LOCK_NOT_WAITING)))
            else:
                grant = lock_grant(change.token, change.expires_ms, now_ms)
                self._replies.append((route, OK_KIND, ok_body(grant)))

    def _park_lock_wait(self, route: Route, name: str, owner: str) -> None:
        """Answer at once when the waiter holds the lock or no longer waits; else park."""
        if self._lock_view is None:
            self._replies.append((route, OK_KIND, ok_body(LOCK_NOT_WAITING)))
            return
        view, now_ms = self._lock_view(name, owner)
        if view.token is not None:
            grant = lock_grant(view.token, view.expires_ms, now_ms)
            self._replies.append((route, OK_KIND, ok_body(grant)))
        elif not view.waiting:
            self._replies.append((route, OK_KIND, ok_body(LOCK_NOT_WAITING)))
        else:
            key = (name, owner)
            self._older_lock_waits.pop(key, None)
            self._lock_waits[key] = route  # a re-ask replaces the earlier wait

    def _age_lock_waits(self) -> None:
        still = [
            (route, OK_KIND, ok_body(LOCK_STILL_QUEUED))
            for route in self._older_lock_waits.values()
        ]
        self._replies.extend(still)
        self._older_lock_waits, self._lock_waits = self._lock_waits, {}


# The bodies' values of `kv.lock_wait` answers.
LOCK_STILL_QUEUED = {"token": None, "queued": True}  # ask again
LOCK_NOT_WAITING = {"token": None, "queued": False}  # not granted: the wait ran out or ended


def lock_grant(token: int, expires_ms: int, now_ms: int) -> dict[str, Any]:
    """A grant as told to a waiter: the token and the lease left at `now_ms` (the leader's
    clock), which the client counts from when it sent its request (a safe lower bound)."""
    return {"token": token, "remaining_ms": max(0, expires_ms - now_ms)}
