"""A lock held by a `Client` (CONTRACT 5): its fencing token, its lease as this process sees
it, and the thread that renews it.

The lease as seen here is a lower bound of the cluster's: each answer that (re)starts it is
counted from when its request was sent, and the cluster's lease starts when the leader stamps
the write, later. So `held()` turns False no later than the cluster's lease runs out (with the
leader's and this machine's clocks running at the same rate); a holder that pauses past it may
still act, which is what the token is for: present it to the resource (`caddy.fencing`) or fence
the cluster's own writes with it (`Client.put(..., fence=lock)`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from caddy.errors import CaddyError, LockLost

RENEWALS_PER_TTL = 3  # a lease is renewed this often within its ttl: two renewals may fail


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
        renew: Callable[[], float | None],
        release: Callable[[], Any],
        renewer_done: Callable[[], Any],
    ) -> None:
        """`renew()` sends one renewal on the renewer's thread: the new lease's end (monotonic),
        or None when the cluster says the lock is not this owner's any more; `renewer_done()`
        runs on that thread when it stops. `release()` sends the release on the caller's
        thread."""
        self.name = name
        self.owner = owner
        self.token = token
        self.ttl = ttl
        self._expires_at = expires_at
        self._lost = False
        self._renew = renew
        self._release = release
        self._renewer_done = renewer_done
        self._stop = threading.Event()
        self._renewer = threading.Thread(
            target=self._keep_renewing, name=f"caddy-lock-{name}", daemon=True
        )
        self._renewer.start()

    def held(self) -> bool:
        """True while the lease surely holds: not lost, not released, not past its end."""
        return not self._lost and not self._stop.is_set() and time.monotonic() < self._expires_at

    def release(self) -> None:
        """Stop renewing and release the lock (the next waiter gets it at once); raises LockLost
        when the lease had been lost before."""
        if self._stop.is_set():
            return
        was_held = self.held()
        self._stop.set()
        self._renewer.join()
        self._release()
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

    def _keep_renewing(self) -> None:
        try:
            self._renew_until_stopped()
        finally:
            self._renewer_done()

    def _renew_until_stopped(self) -> None:
        interval = self.ttl / RENEWALS_PER_TTL
        while not self._stop.wait(interval):
            if time.monotonic() >= self._expires_at:
                self._lost = True
                return
            try:
                expires_at = self._renew()
            except CaddyError:
                continue  # the lease may still hold: try again until it ends
            if expires_at is None:
                self._lost = True
                return
            self._expires_at = expires_at
