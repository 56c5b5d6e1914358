"""The node's clock: tells `Tick()` to every registered actor every `tick_ms` (or every few ticks,
for an actor that needs no finer clock and should not wake more often).

Cores count ticks instead of reading clocks, so this thread is the only place time enters a node.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import pykka

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Tick:
    """One tick of logical time."""


TICK = Tick()


class Ticker:
    """A daemon thread on a drift-free schedule; a late tick is delivered once, never in a burst."""

    def __init__(self, tick_ms: int, name: str = "caddy-ticker") -> None:
        self._interval = tick_ms / 1000
        self._targets: list[tuple[pykka.ActorRef, int]] = []  # (actor, every how many ticks)
        self._count = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def register(self, actor_ref: pykka.ActorRef, every: int = 1) -> None:
        """Tell `actor_ref` every `every`-th tick."""
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self._targets.append((actor_ref, every))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        next_tick = time.monotonic() + self._interval
        while not self._stopping.wait(max(0.0, next_tick - time.monotonic())):
            self._count += 1
            for target, every in self._targets:
                if self._count % every:
                    continue
                try:
                    target.tell(TICK)
                except pykka.ActorDeadError:
                    log.debug("ticker: %s is gone", target)
            next_tick += self._interval
            now = time.monotonic()
            if next_tick < now:  # fell behind (paused process): skip the missed ticks
                next_tick = now + self._interval
