"""The strategies that pick one backend among the eligible ones (healthy, not ejected, not
draining: `caddy.balance.balancer` decides that). Each is a small state object; `rng` is
handed in (seeded in tests and the simulator).

Sources: nginx's smooth weighted round robin (ngx_http_upstream_round_robin.c), HAProxy's
leastconn (active connections over weight), Envoy's least-request "power of two choices"
(Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing", 2001), weight-aware,
and rendezvous hashing (`caddy.balance.hashing`) for `ip_hash`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from caddy.balance.hashing import rendezvous


@dataclass(slots=True)
class Candidate:
    """An eligible backend as a strategy sees it."""

    id: str
    weight: int  # as configured
    effective: float  # its weight now: below `weight` while it slowly starts
    active: int  # requests or connections in flight


class Strategy(Protocol):
    def choose(self, candidates: list[Candidate], key: str | None, rng: random.Random) -> str:
        """One of `candidates` (never empty, in id order)."""
        ...


class RoundRobin:
    """Each in turn."""

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: list[Candidate], key: str | None, rng: random.Random) -> str:
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return chosen.id


class LeastConnections:
    """The fewest in flight per unit of weight (HAProxy's leastconn); ties in turn."""

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: list[Candidate], key: str | None, rng: random.Random) -> str:
        loads = [_load(candidate) for candidate in candidates]
        least = min(loads)
        tied = [c for c, load in zip(candidates, loads, strict=True) if load == least]
        chosen = tied[self._next % len(tied)]
        self._next += 1
        return chosen.id


class SmoothWeighted:
    """nginx's smooth weighted round robin: weights 5, 1, 1 give a a b a c a a, spread out
    rather than five a in a row."""

    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def choose(self, candidates: list[Candidate], key: str | None, rng: random.Random) -> str:
        current = {c.id: self._current.get(c.id, 0.0) + c.effective for c in candidates}
        chosen = max(candidates, key=lambda c: current[c.id])  # the first of equals
        current[chosen.id] -= sum(c.effective for c in candidates)
        self._current = current  # backends no longer eligible start again from 0
        return chosen.id


class WeightedRandom:
    """At random, in proportion to the weights (uniform when they are equal)."""

    def choose(self, candidates: list[Candidate], key: str | None, rng: random.Random) -> str:
        return rng.choices(candidates, weights=[c.effective for c in candidates])[0].id


class ConsistentHash:
    """The same key to the same backend while it is eligible (weighted rendezvous on the
    configured weights, so a slow start does not move keys); without a key, in turn."""

    def __init__(self) -> None:
        self._unkeyed = RoundRobin()

    def choose(self, candidates: list[Candidate], key: str | None, rng: random.Random) -> str:
        if key is None:
            return self._unkeyed.choose(candidates, key, rng)
        chosen = rendezvous(key, ((c.id, float(c.weight)) for c in candidates))
        assert chosen is not None  # candidates is never empty
        return chosen


class PowerOfTwoChoices:
    """Two drawn at random in proportion to their weights, the less loaded of them (in flight
    per unit of weight; the first drawn on a tie): proportional shares when idle, and new work
    away from the busy under load, at the cost of two looks."""

    def choose(self, candidates: list[Candidate], key: str | None, rng: random.Random) -> str:
        if len(candidates) == 1:
            return candidates[0].id
        first = rng.choices(candidates, weights=[c.effective for c in candidates])[0]
        rest = [c for c in candidates if c is not first]
        second = rng.choices(rest, weights=[c.effective for c in rest])[0]
        return (second if _load(second) < _load(first) else first).id


def _load(candidate: Candidate) -> float:
    return candidate.active / candidate.effective


STRATEGIES: dict[str, type] = {
    "round_robin": RoundRobin,
    "least_connections": LeastConnections,
    "weighted": SmoothWeighted,
    "random": WeightedRandom,
    "ip_hash": ConsistentHash,
    "p2c": PowerOfTwoChoices,
}


def strategy(name: str) -> Strategy:
    """A new strategy object; ValueError naming the known ones for an unknown name."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}: one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()
