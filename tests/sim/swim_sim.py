"""Deterministic simulator for the SWIM core: a seeded lossy, delaying network with partitions,
crashes, restarts and slow nodes; every message crosses the real wire codec (and is counted).

`python -m tests.sim.swim_sim [--full]` prints the measured figures as one JSON document.
"""

from __future__ import annotations

import heapq
import json
import random
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from caddy.config import GossipSettings
from caddy.swim import (
    EventKind,
    MemberEvent,
    MemberState,
    SwimNode,
    SwimTimings,
    from_wire,
    to_wire,
)
from caddy.wire import Codec

LAN = GossipSettings.for_profile("lan")
FAST = GossipSettings.for_profile("fast")
CLUSTER = "sim"


@dataclass(frozen=True, slots=True)
class Observed:
    """An event as one node delivered it, stamped with the simulated tick."""

    tick: int
    observer: str
    event: MemberEvent


@dataclass(slots=True)
class SwimSim:
    """`size` nodes named n1..nN, joined through the first `seed_count` of them."""

    size: int
    seed: int
    settings: Any = LAN
    tick_ms: int = 10
    lifeguard: bool = True
    loss: float = 0.0
    delay_ms: tuple[int, int] = (1, 10)
    seed_count: int = 3
    now: int = 0
    nodes: dict[str, SwimNode] = field(default_factory=dict)
    crashed: set[str] = field(default_factory=set)
    group_of: dict[str, int] = field(default_factory=dict)  # partition: only same group talks
    slow_delay_ticks: dict[str, tuple[int, int]] = field(default_factory=dict)
    bytes_sent: Counter[str] = field(default_factory=Counter)
    observed: list[Observed] = field(default_factory=list)
    rng: random.Random = field(init=False)
    timings: SwimTimings = field(init=False)
    ids: list[str] = field(init=False)
    _codecs: dict[str, Codec] = field(default_factory=dict)
    _queue: list[tuple[int, int, str, bytes]] = field(default_factory=list)
    _serial: int = 0
    _live: list[tuple[str, SwimNode]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.timings = SwimTimings.from_settings(
            self.settings, self.tick_ms, lifeguard=self.lifeguard
        )
        self.ids = [f"n{i}" for i in range(1, self.size + 1)]
        self._codecs = {name: Codec(CLUSTER, name) for name in self.ids}
        for name in self.ids:
            self._start(name)

    # ----- driving ------------------------------------------------------------------------------

    def ticks(self, seconds: float) -> int:
        return round(seconds * 1000 / self.tick_ms)

    def seconds(self, ticks: int) -> float:
        return ticks * self.tick_ms / 1000

    def step(self) -> None:
        self.now += 1
        queue = self._queue
        while queue and queue[0][0] <= self.now:
            _, _, to_id, frame = heapq.heappop(queue)
            self._deliver(to_id, frame)
        for name, node in self._live:
            node.tick()
            self._drain(name, node)

    def run(self, seconds: float) -> None:
        for _ in range(self.ticks(seconds)):
            self.step()

    def run_until(
        self, done: Callable[[], bool], max_seconds: float, every_ticks: int = 10
    ) -> bool:
        """Step until `done()` (checked every `every_ticks`) or the deadline; True when done."""
        deadline = self.now + self.ticks(max_seconds)
        while self.now < deadline:
            for _ in range(every_ticks):
                self.step()
            if done():
                return True
        return False

    # ----- faults -------------------------------------------------------------------------------

    def crash(self, name: str) -> None:
        self.crashed.add(name)
        self._refresh_live()

    def restart(self, name: str) -> None:
        """A fresh process: new core at incarnation 0, joining through the seeds again."""
        self.crashed.discard(name)
        self._start(name)

    def partition(self, *groups: Iterable[str]) -> None:
        self.group_of = {name: index for index, group in enumerate(groups) for name in group}

    def heal(self) -> None:
        self.group_of = {}

    def slow_down(self, name: str, extra_delay_ms: tuple[int, int]) -> None:
        """`name` reads its inbox late: every inbound message waits this much longer."""
        low, high = extra_delay_ms
        self.slow_delay_ticks[name] = (low // self.tick_ms, high // self.tick_ms)

    # ----- observations -------------------------------------------------------------------------

    def live_ids(self) -> list[str]:
        return [name for name, _ in self._live]

    def all_see(self, member: str, states: set[MemberState], observers: Iterable[str]) -> bool:
        return all(self.nodes[o].state_of(member) in states for o in observers if o != member)

    def converged(self, among: Iterable[str] | None = None) -> bool:
        """Every node of `among` (default: all live) sees every other one alive, at its own
        incarnation."""
        names = list(among) if among is not None else self.live_ids()
        for member in names:
            incarnation = self.nodes[member].incarnation
            for observer in names:
                node = self.nodes[observer]
                if observer != member and (
                    node.state_of(member) is not MemberState.ALIVE
                    or node.incarnation_of(member) != incarnation
                ):
                    return False
        return True

    def verdicts(self, kind: EventKind, since: int = 0) -> list[Observed]:
        return [o for o in self.observed if o.event.kind is kind and o.tick >= since]

    # ----- internals ----------------------------------------------------------------------------

    def _start(self, name: str) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        node = SwimNode(name, self.timings, rng, metadata={"zone": f"z{int(name[1:]) % 3}"})
        self.nodes[name] = node
        node.join(self.ids[: self.seed_count])
        self._refresh_live()
        self._drain(name, node)

    def _refresh_live(self) -> None:
        self._live = [
            (name, self.nodes[name])
            for name in self.ids
            if name in self.nodes and name not in self.crashed
        ]

    def _drain(self, name: str, node: SwimNode) -> None:
        ready = node.ready()
        for event in ready.events:
            self.observed.append(Observed(self.now, name, event))
        for to_id, message in ready.messages:
            kind, body = to_wire(message)
            frame = self._codecs[name].encode(kind, body)
            self.bytes_sent[name] += len(frame)
            if to_id not in self._codecs or self._cut(name, to_id):
                continue
            if self.loss and self.rng.random() < self.loss:
                continue
            delay = self.rng.randint(*self.delay_ms) // self.tick_ms + 1
            if to_id in self.slow_delay_ticks:
                delay += self.rng.randint(*self.slow_delay_ticks[to_id])
            self._serial += 1
            heapq.heappush(self._queue, (self.now + delay, self._serial, to_id, frame))

    def _cut(self, from_id: str, to_id: str) -> bool:
        return self.group_of.get(from_id, -1) != self.group_of.get(to_id, -1)

    def _deliver(self, to_id: str, frame: bytes) -> None:
        if to_id in self.crashed:
            return
        envelope = self._codecs[to_id].decode(frame)
        node = self.nodes[to_id]
        node.step(envelope.sender, from_wire(envelope.kind, envelope.body))
        self._drain(to_id, node)


def started(size: int, seed: int, **options: Any) -> SwimSim:
    """A simulation whose members all see each other alive (joined and settled)."""
    sim = SwimSim(size, seed, **options)
    if not sim.run_until(sim.converged, max_seconds=60, every_ticks=50):
        raise AssertionError(f"{size} nodes (seed {seed}) did not converge after joining")
    return sim


# ----- scenarios (shared by the tests and the measurements) -------------------------------------


@dataclass(frozen=True, slots=True)
class Detection:
    """Seconds from a crash to the first and to the last live node's dead verdict."""

    first_s: float
    all_s: float
    false_deaths: int


def crash_detection(size: int, seed: int, max_seconds: float = 120, **options: Any) -> Detection:
    sim = started(size, seed, **options)
    sim.run(sim.rng.uniform(0, 5))
    victim = sim.rng.choice(sim.ids)
    crash_tick = sim.now
    sim.crash(victim)
    dead = {MemberState.DEAD}
    if not sim.run_until(lambda: sim.all_see(victim, dead, sim.live_ids()), max_seconds):
        raise AssertionError(f"{victim} not declared dead by all within {max_seconds}s")
    deaths = sim.verdicts(EventKind.DEAD, crash_tick)
    ticks = [o.tick - crash_tick for o in deaths if o.event.member == victim]
    return Detection(
        first_s=sim.seconds(min(ticks)),
        all_s=sim.seconds(max(ticks)),
        false_deaths=sum(1 for o in deaths if o.event.member != victim),
    )


@dataclass(frozen=True, slots=True)
class FalsePositives:
    """Over `seconds` of simulated time with some members slowed down."""

    seconds: float
    suspicions_of_healthy: int  # distinct (member, incarnation) suspicions of healthy members
    deaths_of_healthy: int  # distinct (member, incarnation) dead verdicts, by anyone
    deaths_of_slow: int


def slow_members(
    size: int,
    seed: int,
    seconds: float,
    slow_count: int = 1,
    extra_delay_ms: tuple[int, int] = (300, 3000),
    **options: Any,
) -> FalsePositives:
    """Slow members read their inbox late (and so miss their own deadlines); count false alarms."""
    sim = started(size, seed, **options)
    slow = set(sim.rng.sample(sim.ids, slow_count))
    for name in slow:
        sim.slow_down(name, extra_delay_ms)
    since = sim.now
    sim.run(seconds)

    def distinct(kind: EventKind, slowed: bool) -> int:
        verdicts = sim.verdicts(kind, since)
        return len(
            {
                (o.event.member, o.event.incarnation)
                for o in verdicts
                if (o.event.member in slow) == slowed
            }
        )

    return FalsePositives(
        seconds=seconds,
        suspicions_of_healthy=distinct(EventKind.SUSPECT, slowed=False),
        deaths_of_healthy=distinct(EventKind.DEAD, slowed=False),
        deaths_of_slow=distinct(EventKind.DEAD, slowed=True),
    )


def dissemination_periods(size: int, seed: int, **options: Any) -> float:
    """Protocol periods until a metadata update reaches every member."""
    sim = started(size, seed, **options)
    source = sim.rng.choice(sim.ids)
    sim.nodes[source].update_metadata({"zone": "moved", "weight": 2})
    sim._drain(source, sim.nodes[source])
    target = sim.nodes[source].incarnation
    begin = sim.now

    def reached_all() -> bool:
        return all(node.incarnation_of(source) == target for node in sim.nodes.values())

    if not sim.run_until(reached_all, max_seconds=60, every_ticks=1):
        raise AssertionError("the update did not reach every member")
    return (sim.now - begin) / sim.timings.probe_interval_ticks


def idle_bytes_per_second(size: int, seed: int, seconds: float = 120, **options: Any) -> float:
    """Bytes each node sends per second once settled (envelope included), averaged over nodes."""
    sim = started(size, seed, **options)
    sim.run(sim.seconds(sim.timings.push_pull_interval_ticks))  # let the join gossip die out
    before = sum(sim.bytes_sent.values())
    sim.run(seconds)
    return (sum(sim.bytes_sent.values()) - before) / size / seconds


def partition_and_heal(size: int, seed: int, cut_seconds: float, **options: Any) -> float:
    """Seconds after healing until everyone sees everyone alive again (each side had declared
    the other dead)."""
    sim = started(size, seed, **options)
    half = sim.ids[: size // 2], sim.ids[size // 2 :]
    sim.partition(*half)
    sim.run(cut_seconds)
    for side, other in (half, half[::-1]):
        if not sim.all_see(other[0], {MemberState.DEAD}, side):
            raise AssertionError("the partition was too short for a dead verdict")
    sim.heal()
    healed = sim.now
    if not sim.run_until(sim.converged, max_seconds=600, every_ticks=50):
        raise AssertionError("membership did not converge after healing")
    return sim.seconds(sim.now - healed)


# ----- measurements -----------------------------------------------------------------------------


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "max": round(max(values), 2)}


def measure(full: bool) -> dict[str, Any]:
    """The figures reported for the membership layer, LAN timings unless stated."""
    seeds = range(20 if full else 5)
    report: dict[str, Any] = {"settings": "lan", "tick_ms": 10, "seeds": len(seeds)}
    for size in (5, 50, 200) if full else (5, 50):
        runs = [crash_detection(size, seed) for seed in seeds[: 8 if size == 200 else None]]
        report[f"detection_{size}"] = {
            "first_s": _summary([r.first_s for r in runs]),
            "all_s": _summary([r.all_s for r in runs]),
            "false_deaths": sum(r.false_deaths for r in runs),
        }
    variants = {"fast": FAST, "lan_suspicion_mult_3": GossipSettings.for_profile(suspicion_mult=3)}
    for name, settings in variants.items():
        runs = [crash_detection(5, seed, settings=settings) for seed in seeds]
        report[f"detection_5_{name}"] = {
            "first_s": _summary([r.first_s for r in runs]),
            "all_s": _summary([r.all_s for r in runs]),
        }
    seconds = 600 if full else 120
    for delay_ms in ((300, 3000), (2000, 8000)):
        for lifeguard in (True, False):
            slowed = [
                slow_members(50, seed, seconds, extra_delay_ms=delay_ms, lifeguard=lifeguard)
                for seed in seeds[:4]
            ]
            name = f"slow_1_of_50_by_{delay_ms[0]}_{delay_ms[1]}ms_lifeguard_{lifeguard}"
            report[name.lower()] = {
                "simulated_s": seconds * len(slowed),
                **{
                    k: sum(getattr(r, k) for r in slowed)
                    for k in asdict(slowed[0])
                    if k != "seconds"
                },
            }
    for size in (5, 50, 200) if full else (5, 50):
        periods = [dissemination_periods(size, seed) for seed in seeds[:5]]
        report[f"dissemination_periods_{size}"] = _summary(periods)
    report["idle_bytes_per_s_per_node_5"] = round(idle_bytes_per_second(5, 1), 1)
    return report


if __name__ == "__main__":
    print(json.dumps(measure(full="--full" in sys.argv), indent=1))
