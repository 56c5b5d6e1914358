"""Client sessions: exactly-once application of client writes, wrapped around any StateMachine.

The session table is replicated state (part of the snapshot) and expires by log time alone.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from caddy.replication.commands import Command, CommandError, decode_batch, decode_command
from caddy.replication.packing import pack, unpack
from caddy.replication.state_machine import (
    ErrorCode,
    SnapshotError,
    StateMachine,
    error_result,
    inner_snapshot_view,
)

logger = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1
# Writes one client may have in flight at once: their answers are kept for retries.
MAX_RESULTS_PER_SESSION = 64
_MISSING = object()


@dataclass(slots=True)
class Session:
    """One client's replicated bookkeeping.

    Every seq below `floor` is stale (acknowledged by the client, or pruned to bound the cache);
    every seq at or above it that was applied has its result in `results`, kept in seq order.
    """

    last_active_ms: int
    floor: int
    results: dict[int, Any]


class SessionStateMachine(StateMachine):
    """Applies each (client_id, seq) at most once and answers retries from a result cache.

    Commands are envelopes from `encode_command` (`apply`) or batches of them from `encode_batch`
    (`apply_batch`); each payload goes to `inner`. The client side of
    the bargain: seq counts writes from 1; `ack_below` is the lowest seq whose answer it has not
    received yet; at most `max_results_per_session` writes are in flight at once; on
    `session_expired` it continues under a new client id (a retried write's outcome is then
    unknown, a first attempt was not applied).

    Outcomes, besides the inner machine's own results (which are passed through and cached):
    malformed envelope -> `malformed`; seq below the session's floor -> `stale`; an unknown client
    whose `ack_below` shows it had answers before (its session expired or was evicted) ->
    `session_expired`; the inner machine raised -> `apply_failed` (cached like any result).

    Time is the log time: the highest `log_time_ms` the leaders stamped so far. A session idle for
    longer than `session_ttl_ms` of log time is removed, and beyond `max_sessions` the least
    recently active one is evicted. These settings are part of the replicated semantics: every
    node of a cluster must use the same values.
    """

    __slots__ = (
        "inner",
        "session_ttl_ms",
        "max_sessions",
        "max_results_per_session",
        "_sessions",
        "_log_time_ms",
    )

    def __init__(
        self,
        inner: StateMachine,
        session_ttl_ms: int = 3_600_000,
        max_sessions: int = 100_000,
        max_results_per_session: int = MAX_RESULTS_PER_SESSION,
    ) -> None:
        if session_ttl_ms <= 0 or max_sessions <= 0 or max_results_per_session <= 0:
            raise ValueError("session_ttl_ms, max_sessions and max_results_per_session must be > 0")
        self.inner = inner
        self.session_ttl_ms = session_ttl_ms
        self.max_sessions = max_sessions
        self.max_results_per_session = max_results_per_session
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently active first
        self._log_time_ms = 0

    @property
    def log_time_ms(self) -> int:
        """The highest leader timestamp applied so far (the replicated clock)."""
        return self._log_time_ms

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def session(self, client_id: str) -> Session | None:
        """The live session of `client_id`, for inspection; None when there is none."""
        return self._sessions.get(client_id)

    def apply(self, command: bytes) -> Any:
        try:
            envelope = decode_command(command)
        except CommandError as error:
            return error_result(ErrorCode.MALFORMED, str(error))
        self._advance_clock(envelope.log_time_ms)
        return self._apply_command(envelope)

    def apply_batch(self, data: bytes) -> list[Any]:
        """Apply a batch entry (`encode_batch`): one result per write, in order. A malformed
        write gets a `malformed` result; a malformed batch applies nothing and returns []."""
        try:
            log_time_ms, commands = decode_batch(data)
        except CommandError:
            return []
        self._advance_clock(log_time_ms)
        return [
            self._apply_command(command)
            if isinstance(command, Command)
            else error_result(ErrorCode.MALFORMED, str(command))
            for command in commands
        ]

    def _advance_clock(self, log_time_ms: int) -> None:
        if log_time_ms > self._log_time_ms:
            self._log_time_ms = log_time_ms
            self._expire_idle_sessions()

    def _apply_command(self, envelope: Command) -> Any:
        client_id = envelope.client_id
        if not client_id:
            return self._apply_inner(envelope.payload)
        session = self._sessions.get(client_id)
        if session is None:
            if envelope.ack_below > 1:
                return error_result(
                    ErrorCode.SESSION_EXPIRED, f"no session for client {client_id!r}"
                )
            session = self._open_session(client_id)
        else:
            session.last_active_ms = self._log_time_ms
            self._sessions.move_to_end(client_id)
        seq = envelope.seq
        if seq < session.floor:
            return error_result(ErrorCode.STALE, f"seq {seq} is below {session.floor}")
        _acknowledge(session, envelope.ack_below)
        result = session.results.get(seq, _MISSING)
        if result is _MISSING:
            result = self._apply_inner(envelope.payload)
            self._remember(session, seq, result)
        return result

    def snapshot(self) -> bytes:
        return self.snapshot_view()()

    def snapshot_view(self) -> Callable[[], bytes]:
        """The bytes of `snapshot()` as of now, made when called, possibly on another thread
        while this machine goes on applying: the session table is copied now, and the inner
        machine's `snapshot_view()` is used if it has one (else its snapshot is taken now)."""
        sessions = [
            [client_id, session.last_active_ms, session.floor, list(session.results.items())]
            for client_id, session in self._sessions.items()
        ]
        log_time_ms = self._log_time_ms
        inner = inner_snapshot_view(self.inner)
        return lambda: pack([SNAPSHOT_VERSION, log_time_ms, sessions, inner()])

    def restore(self, data: bytes) -> None:
        fields = unpack(data, SnapshotError)
        if type(fields) is not list or len(fields) != 4:
            raise SnapshotError("session snapshot: expected [version, time, sessions, inner]")
        version, log_time_ms, sessions_data, inner_data = fields
        if type(version) is not int or version != SNAPSHOT_VERSION:
            raise SnapshotError("session snapshot: unknown version")
        if type(log_time_ms) is not int or log_time_ms < 0:
            raise SnapshotError("session snapshot: log time must be a non-negative integer")
        if type(sessions_data) is not list or type(inner_data) is not bytes:
            raise SnapshotError("session snapshot: expected a session list and inner bytes")
        sessions = OrderedDict(_session_from_snapshot(item) for item in sessions_data)
        self.inner.restore(inner_data)
        self._sessions = sessions
        self._log_time_ms = log_time_ms

    def _apply_inner(self, payload: bytes) -> Any:
        try:
            return self.inner.apply(payload)
        except Exception as error:  # a raising machine must not stop the applier on every node
            logger.exception("state machine %s raised", type(self.inner).__name__)
            return error_result(ErrorCode.APPLY_FAILED, f"{type(error).__name__}: {error}")

    def _expire_idle_sessions(self) -> None:
        horizon = self._log_time_ms - self.session_ttl_ms
        sessions = self._sessions
        while sessions and next(iter(sessions.values())).last_active_ms < horizon:
            sessions.popitem(last=False)

    def _open_session(self, client_id: str) -> Session:
        if len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        session = Session(self._log_time_ms, 0, {})
        self._sessions[client_id] = session
        return session

    def _remember(self, session: Session, seq: int, result: Any) -> None:
        results = session.results
        arrived_out_of_order = bool(results) and seq < next(reversed(results))
        results[seq] = result
        if arrived_out_of_order:
            session.results = results = dict(sorted(results.items()))
        if len(results) > self.max_results_per_session:
            lowest = next(iter(results))
            del results[lowest]
            session.floor = lowest + 1


def _acknowledge(session: Session, ack_below: int) -> None:
    """Raise the floor to what the client acknowledged and drop the results below it."""
    if ack_below <= session.floor:
        return
    session.floor = ack_below
    results = session.results
    while results:
        lowest = next(iter(results))
        if lowest >= ack_below:
            return
        del results[lowest]


def _session_from_snapshot(item: Any) -> tuple[str, Session]:
    if type(item) is not list or len(item) != 4:
        raise SnapshotError("session snapshot: expected [client_id, last_active, floor, results]")
    client_id, last_active_ms, floor, results_data = item
    if type(client_id) is not str or type(last_active_ms) is not int or type(floor) is not int:
        raise SnapshotError("session snapshot: malformed session header")
    if type(results_data) is not list or not all(
        type(pair) is list and len(pair) == 2 and type(pair[0]) is int for pair in results_data
    ):
        raise SnapshotError("session snapshot: results must be [seq, result] pairs")
    return client_id, Session(last_active_ms, floor, dict(results_data))
