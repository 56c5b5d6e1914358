"""A lock held by a `Client` (CONTRACT 5): its fencing token, its lease as this process sees
it, and the one thread per client that renews its locks' leases.

The lease as seen here is a lower bound of the cluster's: each answer that (re)starts it is
counted from when its request was sent, and the cluster's lease starts when the leader stamps
the write, later. So `held()` turns False no later than the cluster's lease runs out (with the
leader's and this machine's clocks running at the same rate); a holder that pauses past it may
still act, which is what the token is for: present it to the resource (`caddy.fencing`) or fence
the cluster's own writes with it (`Client.put(..., fence=lock)`).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from caddy.errors import CaddyError, LockLost

RENEWALS_PER_TTL = 3  # a lease is renewed this often within its ttl: two renewals may fail

# renew(client): one renewal sent through the keeper's own client: the new lease's end
# (monotonic), or None when the cluster says the lock is not this owner's any more.
Renew = Callable[[Any], "float | None"]


class Lock:
    """A granted lock. A context manager: leaving the block releases it, and raises LockLost
    when the lease had been lost before (so the block was not protected throughout)."""

    def __init__(
        self,
        name: str,
        owner: str,
        token: int,
        ttl: float,
        expires_at: float,
        renew: Renew,
        release: Callable[[bool], Any],
        keeper: LeaseKeeper,
    ) -> None:
        """`release(wait)` sends the release on the caller's thread, waiting for its commit or
        not; `keeper` renews the lease (`renew`) every third of the ttl until released."""
        self.name = name
        self.owner = owner
        self.token = token
        self.ttl = ttl
        self._expires_at = expires_at
        self._lost = False
        self._released = False
        self._renew = renew
        self._release = release
        keeper.keep(self)

    def held(self) -> bool:
        """True while the lease surely holds: not lost, not released, not past its end."""
        return not (self._lost or self._released) and time.monotonic() < self._expires_at

    def release(self, wait: bool = True) -> None:
        """Stop renewing and release the lock: the next waiter gets it once the release commits.
        With `wait` False, return once the release is sent, without waiting for that commit
        (the client's next request follows it on the same connection, so the two can share
        one log entry; a release lost in a failover leaves the lock to its lease). Raises
        LockLost when the lease had been lost before."""
        if self._released:
            return
        was_held = self.held()
        self._released = True
        self._release(wait)
        if not was_held:
            raise LockLost(f"lock {self.name!r} (token {self.token}) was lost before its release")

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        try:
            self.release()
        except LockLost:
            if exc_type is None:
                raise

    def __repr__(self) -> str:
        return f"Lock({self.name!r}, token={self.token}, held={self.held()})"

    def renew_with(self, client: Any) -> bool:
        """One renewal (on the keeper's thread); whether to renew again later."""
        if self._released:
            return False
        if time.monotonic() >= self._expires_at:
            self._lost = True
            return False
        try:
            expires_at = self._renew(client)
        except CaddyError:
            return True  # the lease may still hold: try again until it ends
        if expires_at is None:
            self._lost = True
            return False
        self._expires_at = expires_at
        return not self._released


class LeaseKeeper:
    """Renews the leases of one client's locks, each every third of its ttl, on one thread
    started with the first lock and through a client of its own (`make_client()`: a Client is
    for one thread). A lock released before its first renewal costs the thread nothing."""

    def __init__(self, make_client: Callable[[], Any]) -> None:
        self._make_client = make_client
        self._due: list[tuple[float, int, Lock]] = []  # a heap by when the renewal is due
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def keep(self, lock: Lock) -> None:
        with self._wake:
            self._schedule(lock)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="caddy-leases", daemon=True)
                self._thread.start()
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _schedule(self, lock: Lock) -> None:
        when = time.monotonic() + lock.ttl / RENEWALS_PER_TTL
        heapq.heappush(self._due, (when, next(self._order), lock))

    def _run(self) -> None:
        client = None
        try:
            while (lock := self._next_due()) is not None:
                if client is None:
                    client = self._make_client()
                client.timeout = lock.ttl / RENEWALS_PER_TTL
                if lock.renew_with(client):
                    with self._wake:
                        self._schedule(lock)
        finally:
            if client is not None:
                client.close()

    def _next_due(self) -> Lock | None:
        """The next lock to renew, once due (released ones are dropped); None once closed."""
        with self._wake:
            while not self._closed:
                if self._due and self._due[0][2]._released:
                    heapq.heappop(self._due)
                    continue
                wait = self._due[0][0] - time.monotonic() if self._due else None
                if wait is not None and wait <= 0:
                    return heapq.heappop(self._due)[2]
                self._wake.wait(wait)
            return None
