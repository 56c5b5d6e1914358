"""The node's Ticker: every registered actor is told Tick() on its schedule, every tick or
every few."""

import queue

import pykka
import pytest

from actors.ticker import Tick, Ticker
from tests.harness import wait_until


class Counter(pykka.ThreadingActor):
    def __init__(self, seen: queue.SimpleQueue) -> None:
        super().__init__()
        self.seen = seen

    def on_receive(self, message):
        if isinstance(message, Tick):
            self.seen.put(1)


def test_an_actor_registered_every_five_ticks_is_told_a_fifth_as_often():
    every_tick, every_fifth = queue.SimpleQueue(), queue.SimpleQueue()
    ticker = Ticker(1)
    ticker.register(Counter.start(every_tick))
    ticker.register(Counter.start(every_fifth), every=5)
    ticker.start()
    try:
        wait_until(lambda: every_fifth.qsize() >= 20, 10, "20 ticks of the slow one")
    finally:
        ticker.stop()
        pykka.ActorRegistry.stop_all()
    fast, slow = every_tick.qsize(), every_fifth.qsize()
    assert 5 * slow <= fast <= 5 * slow + 4  # each fifth tick of the same count


def test_every_must_be_a_whole_positive_number_of_ticks():
    with pytest.raises(ValueError, match="at least 1"):
        Ticker(10).register(None, every=0)
