"""Small drivers for the SWIM core tests: short timings, a one-tick-latency network, probes."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from caddy.swim import Alive, Gossip, MemberEvent, MemberState, Message, SwimNode, SwimTimings

TIMINGS = SwimTimings(
    tick_ms=100,
    probe_interval_ticks=10,
    probe_timeout_ticks=4,
    gossip_interval_ticks=2,
    push_pull_interval_ticks=1000,
)
CLASSIC = replace(TIMINGS, lifeguard=False)


def make_node(name: str = "a", seed: int = 1, timings: SwimTimings = TIMINGS, **kw) -> SwimNode:
    return SwimNode(name, timings, random.Random(seed), **kw)


def teach(node: SwimNode, *members: str, incarnation: int = 0) -> None:
    """Make `node` know `members` as alive (through a gossip message), outputs discarded."""
    node.step("teacher", Gossip(tuple(Alive(m, incarnation) for m in members)))
    node.ready()


def tick_until(
    node: SwimNode, wanted: Callable[[str, Message], bool], max_ticks: int = 100
) -> tuple[str, Message]:
    """Tick until `node` sends a message matching `wanted`; other output is discarded."""
    for _ in range(max_ticks):
        node.tick()
        for to_id, message in node.ready().messages:
            if wanted(to_id, message):
                return to_id, message
    raise AssertionError("the expected message was never sent")


def of_type(kind: type, to: str | None = None) -> Callable[[str, Message], bool]:
    return lambda to_id, message: isinstance(message, kind) and to in (None, to_id)


@dataclass
class Net:
    """Nodes joined through each other; messages arrive one tick after they are sent.

    `down` nodes neither tick, send nor receive; `cut` links (a, b) drop a -> b messages.
    """

    names: Iterable[str]
    timings: SwimTimings = TIMINGS
    seed: int = 0
    nodes: dict[str, SwimNode] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    cut: set[tuple[str, str]] = field(default_factory=set)
    events: list[tuple[str, MemberEvent]] = field(default_factory=list)
    sent: list[tuple[str, str, Message]] = field(default_factory=list)
    _in_flight: list[tuple[str, str, Message]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.names = list(self.names)
        for index, name in enumerate(self.names):
            self.nodes[name] = SwimNode(name, self.timings, random.Random(self.seed * 100 + index))
        for name in self.names:
            self.nodes[name].join(self.names)
            self._collect(name)

    def tick(self, count: int = 1) -> None:
        for _ in range(count):
            arriving, self._in_flight = self._in_flight, []
            for from_id, to_id, message in arriving:
                if to_id not in self.down and (from_id, to_id) not in self.cut:
                    self.nodes[to_id].step(from_id, message)
                    self._collect(to_id)
            for name in self.names:
                if name not in self.down:
                    self.nodes[name].tick()
                    self._collect(name)

    def settle(self, max_ticks: int = 500) -> None:
        for _ in range(max_ticks):
            if self.all_alive():
                return
            self.tick()
        raise AssertionError("the members never all saw each other alive")

    def all_alive(self) -> bool:
        up = [n for n in self.names if n not in self.down]
        return all(self.nodes[a].state_of(b) is MemberState.ALIVE for a in up for b in up if a != b)

    def state(self, observer: str, member: str) -> MemberState | None:
        return self.nodes[observer].state_of(member)

    def _collect(self, name: str) -> None:
        ready = self.nodes[name].ready()
        self.events.extend((name, event) for event in ready.events)
        for to_id, message in ready.messages:
            self.sent.append((name, to_id, message))
            if to_id in self.nodes and name not in self.down:
                self._in_flight.append((name, to_id, message))
