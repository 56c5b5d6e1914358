"""The node's Ticker: every registered actor is told Tick() on its schedule, every tick or
every few."""

import threading

import pytest

from actors.ticker import Tick, Ticker
from tests.harness import wait_until


class CountingRef:
    """Stands for an actor ref: counts the ticks told, on the ticker's own thread."""

    def __init__(self) -> None:
        self.ticks = 0
        self.lock = threading.Lock()

    def tell(self, message) -> None:
        assert isinstance(message, Tick)
        with self.lock:
            self.ticks += 1


def test_an_actor_registered_every_five_ticks_is_told_every_fifth_tick():
    every_tick, every_fifth = CountingRef(), CountingRef()
    ticker = Ticker(1)
    ticker.register(every_tick)
    ticker.register(every_fifth, every=5)
    ticker.start()
    try:
        wait_until(lambda: every_fifth.ticks >= 20, 10, "20 ticks of the slow one")
    finally:
        ticker.stop()
    assert every_fifth.ticks == every_tick.ticks // 5  # told on ticks 5, 10, 15, ...


def test_every_must_be_a_whole_positive_number_of_ticks():
    with pytest.raises(ValueError, match="at least 1"):
        Ticker(10).register(CountingRef(), every=0)
