"""Fencing tokens, checked at the resource a lock protects.

A lock lease cannot keep a paused holder out: a client stalled by a GC pause, a swapped-out page
or a slow network wakes after its lease expired and another client took the lock, and still
believes it holds it. So every grant carries a token that only grows (CONTRACT 5: greater than
every token granted for that name before), and the *resource* refuses a request whose token is
below one it has already seen (Kleppmann, "How to do distributed locking", 2016; Chubby's
sequencers, Burrows, OSDI 2006, section 2.4). The lock service cannot do this check for you: only
the resource sees the requests in the order it applies them.

The check must be atomic with the write it guards: checked first and written later, an older
holder's write can still land after a newer holder's. `FencingGuard.fenced` holds the guard's lock
across your write; a resource that keeps its data in SQLite checks inside the write's own
transaction with `caddy.fencing_sqlite.SqliteFence`. A guard that lives in memory forgets on a
restart, so a resource that restarts keeps `state()` beside its data and builds the guard again
with `FencingGuard.from_state`.

Thread-safe: a resource server checks from many threads, so the guard holds a `threading.Lock`
unless given another lock (`lock=`, e.g. one the resource already holds around its writes).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from caddy.errors import CaddyError


class StaleToken(CaddyError):
    """A token below the highest this resource has seen for the name: its holder lost the lock
    (the lease expired and the lock was granted again), so its request must not be applied."""

    def __init__(self, name: str, token: int, highest: int) -> None:
        super().__init__(
            f"stale fencing token {token} for {name!r}: token {highest} was already seen"
        )
        self.name = name
        self.token = token
        self.highest = highest


def validate(name: object, token: object) -> None:
    """TypeError unless `name` is a str and `token` an int (not a bool); ValueError below 0."""
    if not isinstance(name, str):
        raise TypeError(f"a lock name must be a str, got {type(name).__name__}")
    if not isinstance(token, int) or isinstance(token, bool):
        raise TypeError(f"a fencing token must be an int, got {type(token).__name__}")
    if token < 0:
        raise ValueError(f"a fencing token is never negative, got {token}")


class FencingGuard:
    """The highest token seen per lock name, at one resource. A token equal to the highest is
    accepted: it is the same holder's next request."""

    __slots__ = ("_highest", "_lock")

    def __init__(self, lock: AbstractContextManager[Any] | None = None) -> None:
        self._highest: dict[str, int] = {}
        self._lock = lock if lock is not None else threading.Lock()

    @classmethod
    def from_state(
        cls, state: Mapping[str, int], lock: AbstractContextManager[Any] | None = None
    ) -> FencingGuard:
        """A guard that remembers what `state()` returned (kept beside the resource's data)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"a guard's state must be a mapping, got {type(state).__name__}")
        guard = cls(lock)
        for name, token in state.items():
            validate(name, token)
            guard._highest[name] = token
        return guard

    def check(self, name: str, token: int) -> None:
        """Accept and record `token`, or raise StaleToken when a higher one was seen for `name`."""
        validate(name, token)
        with self._lock:
            self._admit(name, token)

    @contextmanager
    def fenced(self, name: str, token: int) -> Iterator[None]:
        """Check `token` and hold the guard's lock while the block writes, so that writes are
        applied in the order their tokens were accepted. The token stays recorded when the block
        fails: that only refuses older holders sooner. Do not call the guard inside the block
        unless its lock is reentrant."""
        validate(name, token)
        with self._lock:
            self._admit(name, token)
            yield

    def highest(self, name: str) -> int | None:
        """The highest token seen for `name`; None when none was."""
        if not isinstance(name, str):
            raise TypeError(f"a lock name must be a str, got {type(name).__name__}")
        with self._lock:
            return self._highest.get(name)

    def state(self) -> dict[str, int]:
        """A copy of the highest token per name, for `from_state`."""
        with self._lock:
            return dict(self._highest)

    def _admit(self, name: str, token: int) -> None:
        highest = self._highest.get(name)
        if highest is not None and token < highest:
            raise StaleToken(name, token, highest)
        self._highest[name] = token
