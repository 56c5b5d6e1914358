"""Named locks with fencing tokens, replicated through the log: leases of log time, FIFO waiters,
and writes fenced by a token.

Why a token: a lock holder that pauses (GC, SIGSTOP, a slow disk) past its lease may wake up
and act as if it still held the lock. A token that only grows lets the resource refuse it
(Kleppmann, "How to do distributed locking", 2016; Chubby's sequencers, Burrows 2006, 2.4).
Every grant takes the next value of one counter, so a token is greater than every token granted
before, for any name; the counter is replicated state (in the snapshot), so this holds across
leader changes and restarts. etcd's lock token is the same idea: the key's create revision.

Time is the log time (the leader's clock stamped on each entry, never going back): a lease
granted at log time t with ttl expires at t + ttl unless renewed; every replica decides
expiry from the log alone, so all agree. Expiry is judged whenever a lock command is applied; the
leader proposes a sweep (`SWEEP`) once `next_deadline_ms` passes, so that a lapsed lease passes
to the next waiter and a waiter whose wait ran out is dropped even when no one else writes.

Pure and deterministic: `LockingStateMachine` wraps the node's state machine (inside the session
layer, so lock commands are exactly-once like every write) and takes the lock commands out of
the stream of payloads; every other payload goes to the inner machine untouched.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from caddy.bounds import MAX_INT64, MAX_NAME_LENGTH
from caddy.replication.commands import CommandError, encode_batch
from caddy.replication.packing import pack, unpack
from caddy.replication.sessions import SessionStateMachine
from caddy.replication.state_machine import (
    ErrorCode,
    SnapshotError,
    StateMachine,
    error_result,
    layer_snapshot_view,
    ok_result,
    split_layer_snapshot,
)

ACQUIRE, RENEW, RELEASE, FENCE, SWEEP = (
    "lock.acquire",
    "lock.renew",
    "lock.release",
    "lock.fence",
    "lock.sweep",
)
_OPS = frozenset((ACQUIRE, RENEW, RELEASE, FENCE, SWEEP))
# Every lock command is a msgpack array of five: [op, name, owner, number, extra]. A key-value
# payload is an array of four (`encode_kv`), so one byte tells them apart on the hot path.
_LOCK_COMMAND_PREFIX = b"\x95"
MAX_TTL_MS = 24 * 3600 * 1000  # a lease longer than a day is a mistake, not a lease
MAX_WAITERS = 1024  # per name; beyond, an acquire is answered "not acquired"
SNAPSHOT_TAG = "caddy.locks"
SNAPSHOT_VERSION = 1
_UNKNOWN = object()
# Results' values: granted {"token": t, "expires_ms": e}; else one of these (never changed).
_QUEUED = {"token": None, "queued": True}  # ask the leader with kv.lock_wait
_NOT_ACQUIRED = {"token": None, "queued": False}
SWEEP_RETRY_MS = 1000  # a sweep not applied by then (lost in a leader change) is proposed again


class Holder(NamedTuple):
    owner: str
    token: int
    ttl_ms: int
    expires_ms: int


class Waiter(NamedTuple):
    owner: str
    ttl_ms: int
    deadline_ms: int  # the log time at which it stops waiting


@dataclass(slots=True)
class _Lock:
    holder: Holder | None = None
    waiters: deque[Waiter] = field(default_factory=deque)


class LockChange(NamedTuple):
    """What applying a command did to a waiter, for the leader to tell the client that waits:
    `token` granted (with the lease's `expires_ms`), or None: it stopped waiting (its wait ran
    out, or it cancelled)."""

    name: str
    owner: str
    token: int | None
    expires_ms: int


class LockView(NamedTuple):
    """Where `owner` stands for `name` now: holding (`token`, `expires_ms`), waiting, or neither."""

    token: int | None
    expires_ms: int
    waiting: bool


# ----- commands ------------------------------------------------------------------------------


def encode_lock(op: str, name: str, owner: str = "", number: int = 0, extra: Any = 0) -> bytes:
    """A lock command's payload: acquire (number ttl_ms, extra wait_ms), renew (number token),
    release, fence (number token, extra the inner payload), sweep (no name). CommandError for
    invalid fields."""
    check_lock(op, name, owner, number, extra)
    return pack([op, name, owner, number, extra])


def decode_lock(payload: bytes) -> tuple[str, str, str, int, Any]:
    fields = unpack(payload, CommandError)
    if type(fields) is not list or len(fields) != 5:
        raise CommandError("lock: expected [op, name, owner, number, extra]")
    check_lock(*fields)
    op, name, owner, number, extra = fields
    return op, name, owner, number, extra


def is_lock_command(payload: bytes) -> bool:
    return payload[:1] == _LOCK_COMMAND_PREFIX


def check_lock(op: Any, name: Any, owner: Any, number: Any, extra: Any) -> None:
    """Raise CommandError unless the fields make a valid lock command (see `encode_lock`)."""
    if type(op) is not str or op not in _OPS:
        raise CommandError("lock: unknown operation")
    if op == SWEEP:
        if name != "" or owner != "" or number != 0 or extra != 0:
            raise CommandError("lock: a sweep takes no fields")
        return
    if not _is_name(name):
        raise CommandError(f"lock: name must be a string of 1 to {MAX_NAME_LENGTH} characters")
    if op != FENCE and not _is_name(owner):
        raise CommandError(f"lock: owner must be a string of 1 to {MAX_NAME_LENGTH} characters")
    if type(number) is not int:
        raise CommandError("lock: expected an integer")
    if op == ACQUIRE:
        if not 1 <= number <= MAX_TTL_MS:
            raise CommandError(f"lock: ttl_ms must be 1 to {MAX_TTL_MS}")
        if type(extra) is not int or not 0 <= extra <= MAX_TTL_MS:
            raise CommandError(f"lock: wait_ms must be 0 to {MAX_TTL_MS}")
    elif op == FENCE:
        if owner != "" or not 1 <= number <= MAX_INT64 or type(extra) is not bytes:
            raise CommandError("lock: a fence takes a token >= 1 and the write's payload")
    elif op == RENEW:
        if not 1 <= number <= MAX_INT64 or extra != 0:
            raise CommandError("lock: a renewal takes a token >= 1")
    elif number != 0 or extra != 0:
        raise CommandError("lock: a release takes a name and an owner only")


def _is_name(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_NAME_LENGTH


# ----- the table -----------------------------------------------------------------------------


class LockTable:
    """Every lock's holder and waiters, and the token counter. Each method takes the log time
    `now` (ms) of the command it applies."""

    __slots__ = ("revision", "_locks", "_changes", "_deadline")

    def __init__(self) -> None:
        self.revision = 0  # the last token granted
        self._locks: dict[str, _Lock] = {}
        self._changes: list[LockChange] = []
        self._deadline: int | None | object = _UNKNOWN  # next_deadline_ms, until a change

    def __len__(self) -> int:
        return len(self._locks)

    def take_changes(self) -> list[LockChange]:
        """What happened to waiters since the last call (every replica has them; the leader
        tells the clients)."""
        changes, self._changes = self._changes, []
        return changes

    def view(self, name: str, owner: str, now: int) -> LockView:
        """Where `owner` stands for `name` as of log time `now` (a lapsed lease is not held)."""
        lock = self._locks.get(name)
        if lock is None:
            return LockView(None, 0, False)
        holder = lock.holder
        if holder is not None and holder.owner == owner and holder.expires_ms > now:
            return LockView(holder.token, holder.expires_ms, False)
        waiting = any(w.owner == owner and w.deadline_ms > now for w in lock.waiters)
        return LockView(None, 0, waiting)

    def holder(self, name: str, now: int) -> Holder | None:
        lock = self._locks.get(name)
        if lock is None or lock.holder is None or lock.holder.expires_ms <= now:
            return None
        return lock.holder

    def next_deadline_ms(self) -> int | None:
        """The earliest log time at which a lease lapses or a wait runs out; None if none.
        Asked on every tick of the leader, so kept until a lock command changes the table."""
        if self._deadline is not _UNKNOWN:
            return self._deadline  # type: ignore[return-value]
        deadlines = [
            deadline
            for lock in self._locks.values()
            for deadline in (
                *((lock.holder.expires_ms,) if lock.holder is not None else ()),
                *(w.deadline_ms for w in lock.waiters),
            )
        ]
        self._deadline = min(deadlines, default=None)
        return self._deadline

    def acquire(self, name: str, owner: str, ttl_ms: int, wait_ms: int, now: int) -> dict:
        """Granted (`{"token", "expires_ms"}`) when free or already `owner`'s (then extended);
        queued (`{"token": None, "queued": True}`) when held by another and `wait_ms` > 0; else
        not acquired (`queued` False)."""
        lock = self._settle(name, now)
        holder = lock.holder
        if holder is None:
            return ok_result(self._grant(name, lock, owner, ttl_ms, now))
        if holder.owner == owner:  # a second acquire by the holder: never shortens the lease
            expires_ms = max(holder.expires_ms, now + ttl_ms)  # (the holder may count on it)
            lock.holder = holder = holder._replace(ttl_ms=ttl_ms, expires_ms=expires_ms)
            return ok_result({"token": holder.token, "expires_ms": holder.expires_ms})
        if any(w.owner == owner for w in lock.waiters):
            return ok_result(_QUEUED)
        if wait_ms == 0 or len(lock.waiters) >= MAX_WAITERS:
            return ok_result(_NOT_ACQUIRED)
        lock.waiters.append(Waiter(owner, ttl_ms, now + wait_ms))
        return ok_result(_QUEUED)

    def renew(self, name: str, owner: str, token: int, now: int) -> dict:
        """Extend the lease to its ttl from `now` (never shorter than it was) if `owner` still
        holds it with `token`."""
        lock = self._settle(name, now)
        holder = lock.holder
        if holder is None or holder.owner != owner or holder.token != token:
            self._forget_if_idle(name, lock)
            return ok_result(_NOT_ACQUIRED)
        expires_ms = max(holder.expires_ms, now + holder.ttl_ms)  # never shortened either
        lock.holder = holder = holder._replace(expires_ms=expires_ms)
        return ok_result({"token": token, "expires_ms": expires_ms})

    def release(self, name: str, owner: str, now: int) -> dict:
        """Release (True) or stop waiting (False): the next waiter, if any, is granted."""
        lock = self._settle(name, now)
        released = lock.holder is not None and lock.holder.owner == owner
        if released:
            lock.holder = None
            self._grant_next(name, lock, now)
        elif any(w.owner == owner for w in lock.waiters):
            lock.waiters = deque(w for w in lock.waiters if w.owner != owner)
            self._changes.append(LockChange(name, owner, None, 0))
        self._forget_if_idle(name, lock)
        return ok_result(released)

    def fence_holds(self, name: str, token: int, now: int) -> bool:
        """Whether `token` holds `name` at `now` (the check of a fenced write)."""
        holder = self.holder(name, now)
        return holder is not None and holder.token == token

    def sweep(self, now: int) -> None:
        """Settle every lock whose lease lapsed or whose waiter's wait ran out by `now`."""
        for name in list(self._locks):
            self._forget_if_idle(name, self._settle(name, now))

    def _settle(self, name: str, now: int) -> _Lock:
        """The lock `name` as of `now`: a lapsed lease released (to the next waiter), waits that
        ran out dropped. Created empty if absent (the caller forgets it if it stays idle)."""
        self._deadline = _UNKNOWN
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = _Lock()
            return lock
        if lock.waiters and any(w.deadline_ms <= now for w in lock.waiters):
            for waiter in lock.waiters:
                if waiter.deadline_ms <= now:
                    self._changes.append(LockChange(name, waiter.owner, None, 0))
            lock.waiters = deque(w for w in lock.waiters if w.deadline_ms > now)
        if lock.holder is not None and lock.holder.expires_ms <= now:
            lock.holder = None
            self._grant_next(name, lock, now)
        return lock

    def _grant_next(self, name: str, lock: _Lock, now: int) -> None:
        if lock.waiters:
            waiter = lock.waiters.popleft()
            granted = self._grant(name, lock, waiter.owner, waiter.ttl_ms, now)
            change = LockChange(name, waiter.owner, granted["token"], granted["expires_ms"])
            self._changes.append(change)

    def _grant(self, name: str, lock: _Lock, owner: str, ttl_ms: int, now: int) -> dict:
        self.revision += 1
        lock.holder = Holder(owner, self.revision, ttl_ms, now + ttl_ms)
        return {"token": self.revision, "expires_ms": now + ttl_ms}

    def _forget_if_idle(self, name: str, lock: _Lock) -> None:
        if lock.holder is None and not lock.waiters:
            self._locks.pop(name, None)

    # ----- snapshot ---------------------------------------------------------------------------

    def to_state(self) -> list:
        return [
            self.revision,
            [
                [name, list(lock.holder) if lock.holder else None, [list(w) for w in lock.waiters]]
                for name, lock in self._locks.items()
            ],
        ]

    @classmethod
    def from_state(cls, state: Any) -> LockTable:
        if type(state) is not list or len(state) != 2 or type(state[0]) is not int:
            raise SnapshotError("lock snapshot: expected [revision, locks]")
        table = cls()
        table.revision, locks = state
        if type(locks) is not list:
            raise SnapshotError("lock snapshot: expected a list of locks")
        for item in locks:
            table._locks[_name_of(item)] = _lock_from_state(item)
        return table


def _name_of(item: Any) -> str:
    if type(item) is not list or len(item) != 3 or not _is_name(item[0]):
        raise SnapshotError("lock snapshot: expected [name, holder, waiters]")
    return item[0]


def _lock_from_state(item: list) -> _Lock:
    _, holder, waiters = item
    try:
        return _Lock(
            Holder(*holder) if holder is not None else None,
            deque(Waiter(*waiter) for waiter in waiters),
        )
    except TypeError as error:
        raise SnapshotError(f"lock snapshot: malformed lock: {error}") from error


# ----- the state machine layer ----------------------------------------------------------------


class LockingStateMachine(StateMachine):
    """The node's state machine with locks: lock commands are applied to `locks`, a fenced write
    goes to `inner` only while its token holds the lock (else `fenced_out`), anything else goes
    to `inner` as it is. `clock()` is the log time (`SessionStateMachine.log_time_ms`)."""

    __slots__ = ("inner", "locks", "clock", "_inner_apply")

    def __init__(self, inner: StateMachine, clock: Callable[[], int]) -> None:
        self.inner = inner
        self.locks = LockTable()
        self.clock = clock
        self._inner_apply = inner.apply  # bound once: this runs for every write

    def apply(self, command: bytes) -> Any:
        if command[:1] != _LOCK_COMMAND_PREFIX:  # `is_lock_command`, without the call
            return self._inner_apply(command)  # every key-value write
        try:
            op, name, owner, number, extra = decode_lock(command)
        except CommandError as error:
            return error_result(ErrorCode.INVALID, str(error))
        now, locks = self.clock(), self.locks
        if op == FENCE:
            if not locks.fence_holds(name, number, now):
                return error_result(
                    ErrorCode.FENCED_OUT, f"token {number} does not hold lock {name!r}"
                )
            return self.inner.apply(extra)
        if op == ACQUIRE:
            return locks.acquire(name, owner, number, extra, now)
        if op == RENEW:
            return locks.renew(name, owner, number, now)
        if op == RELEASE:
            return locks.release(name, owner, now)
        locks.sweep(now)
        return ok_result()

    def snapshot(self) -> bytes:
        return self.snapshot_view()()

    def snapshot_view(self) -> Callable[[], bytes]:
        """The lock table is copied now (it is small); the inner machine's view is used if it
        has one."""
        return layer_snapshot_view(
            SNAPSHOT_TAG, SNAPSHOT_VERSION, self.locks.to_state(), self.inner
        )

    def restore(self, data: bytes) -> None:
        """A snapshot of this layer, or of the inner machine alone (written before locks
        existed: no locks then)."""
        layer = split_layer_snapshot(data, SNAPSHOT_TAG, SNAPSHOT_VERSION)
        if layer is None:
            self.inner.restore(data)
            self.locks = LockTable()
            return
        table = LockTable.from_state(layer[0])
        self.inner.restore(layer[1])
        self.locks = table


def with_locks(machine: StateMachine) -> tuple[SessionStateMachine, LockingStateMachine]:
    """The state machine stack a node runs: sessions (exactly-once) around locks around
    `machine`; the lock layer's clock is the session layer's log time."""
    sessions: SessionStateMachine
    locking = LockingStateMachine(machine, clock=lambda: sessions.log_time_ms)
    sessions = SessionStateMachine(locking)
    return sessions, locking


def sweep_entry(now_ms: int) -> bytes:
    """The log entry of a sweep, stamped `now_ms`: a command outside any session."""
    return encode_batch(now_ms, [("", 0, 0, encode_lock(SWEEP, ""))])


@dataclass(slots=True)
class SweepTimer:
    """When the leader proposes a sweep: once the table's next deadline has passed, and for the
    same deadline again only after SWEEP_RETRY_MS (the first one was lost, or not applied yet)."""

    _deadline: int | None = None
    _proposed_ms: int = 0

    def due(self, deadline: int | None, now_ms: int) -> bool:
        if deadline is None or now_ms < deadline:
            return False
        if deadline == self._deadline and now_ms < self._proposed_ms + SWEEP_RETRY_MS:
            return False
        self._deadline, self._proposed_ms = deadline, now_ms
        return True
