"""Seeded fault simulation of the balancer core (`caddy.balance`): backends fail and recover
(their calls fail while they are broken, active checks notice after a delay), drain and
undrain, join, leave and change weight, while callers pick, start and finish requests, some
long. Every strategy, random settings.

Checked at every pick:
- never a draining backend, and None only when every backend drains (or, with the panic
  threshold off, none is eligible);
- outside panic, only a backend that is healthy and not ejected; in panic, fewer than the
  threshold's share of the backends not draining are eligible;
- no ejection beyond the share of backends that may be out at once (at least one);
- each backend's active count equals its requests started less finished, its total the
  started, its failures those reported failed.
After the faults heal and the ejections and slow starts run out: every backend is eligible
again, and the picks of a weighted strategy follow the weights.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from caddy.balance import Backend, Balancer, BalanceSettings, EjectionSettings
from caddy.balance.strategies import STRATEGIES

STEP_S = 0.1
FAULT_STEPS = 2000


class BalanceInvariantViolation(AssertionError):
    pass


@dataclass
class SimBackend:
    backend: Backend
    broken: bool = False  # its calls fail
    checked_healthy: bool = True  # what its active checks last said
    draining: bool = False


@dataclass
class Request:
    backend: str
    ends_at: float


@dataclass
class Books:
    """What the simulation itself counted, per backend, to check the balancer's statistics."""

    started: Counter = field(default_factory=Counter)
    finished: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)


class BalanceWorld:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.strategy = self.rng.choice(sorted(STRATEGIES))
        self.settings = BalanceSettings(
            slow_start_s=self.rng.choice((0.0, 2.0, 10.0)),
            panic_threshold_percent=self.rng.choice((0, 30, 50, 80)),
            ejection=EjectionSettings(
                consecutive_failures=self.rng.choice((1, 3, 5)),
                base_ejection_s=self.rng.choice((1.0, 5.0)),
                max_ejection_s=self.rng.choice((5.0, 20.0)),
                max_ejection_percent=self.rng.choice((10, 34, 100)),
            ),
        )
        self.balancer = Balancer(self.strategy, self.settings, random.Random(f"{seed}-pick"))
        self.now = 0.0
        self.next_id = 0
        self.backends: dict[str, SimBackend] = {}
        for _ in range(self.rng.randint(1, 8)):
            self.add_backend()
        self.balancer.update(self.registry(), self.now)
        self.in_flight: list[Request] = []
        self.books = Books()
        self.picks = 0
        self.was_ejected: set[str] = set()
        self.trace: list[str] = []

    def add_backend(self) -> None:
        backend_id = f"b{self.next_id}"
        self.next_id += 1
        weight = self.rng.choice((1, 1, 2, 5))
        self.backends[backend_id] = SimBackend(Backend(backend_id, f"tcp://h:{backend_id}", weight))

    def registry(self) -> list[Backend]:
        return [sim.backend for sim in self.backends.values()]

    def log(self, line: str) -> None:
        self.trace.append(f"[{self.now:.1f}] {line}")

    # ----- faults -----------------------------------------------------------------------------

    def inject_faults(self) -> None:
        rng = self.rng
        if not self.backends:
            return
        victim = self.backends[rng.choice(sorted(self.backends))]
        roll = rng.random()
        if roll < 0.01:
            victim.broken = not victim.broken
            self.log(f"{victim.backend.id} {'broken' if victim.broken else 'fixed'}")
        elif roll < 0.015:
            self.set_draining(victim, not victim.draining)
        elif roll < 0.018 and len(self.backends) < 10:
            self.add_backend()
            self.balancer.update(self.registry(), self.now)
            self.log(f"added b{self.next_id - 1}")
        elif roll < 0.02 and len(self.backends) > 1:
            del self.backends[victim.backend.id]
            self.balancer.update(self.registry(), self.now)
            self.log(f"removed {victim.backend.id}")
        elif roll < 0.023:
            weight = rng.choice((1, 2, 3, 10))
            victim.backend = Backend(victim.backend.id, victim.backend.address, weight)
            self.balancer.update(self.registry(), self.now)

    def set_draining(self, sim: SimBackend, draining: bool) -> None:
        sim.draining = draining
        self.balancer.set_draining(sim.backend.id, draining, self.now)
        self.log(f"{sim.backend.id} {'draining' if draining else 'undrained'}")

    def heal(self) -> None:
        for sim in self.backends.values():
            sim.broken = False
            if sim.draining:
                self.set_draining(sim, False)

    # ----- traffic and checks -----------------------------------------------------------------

    def step(self, faults: bool) -> None:
        self.now = round(self.now + STEP_S, 6)
        if faults:
            self.inject_faults()
        if round(self.now / STEP_S) % 10 == 0:  # active checks every second
            for backend_id, sim in self.backends.items():
                if sim.checked_healthy == sim.broken:
                    sim.checked_healthy = not sim.broken
                    self.balancer.set_healthy(backend_id, sim.checked_healthy, self.now)
        self.finish_due()
        self.check_ejections()
        for _ in range(self.rng.randint(0, 6)):
            self.pick_and_start()
        self.check_books()

    def pick_and_start(self) -> None:
        key = f"10.0.{self.rng.randint(0, 3)}.{self.rng.randint(0, 255)}"
        candidates = self.balancer.candidates(self.now)
        panicking = self.balancer.panicking(self.now)
        chosen = self.balancer.pick(self.now, key)
        self.picks += 1
        self.check_pick(chosen, candidates, panicking)
        if chosen is None:
            return
        self.balancer.started(chosen.id)
        self.books.started[chosen.id] += 1
        length = self.rng.choice((0.1, 0.2, 0.5, 3.0))
        self.in_flight.append(Request(chosen.id, self.now + length))

    def finish_due(self) -> None:
        due = [request for request in self.in_flight if request.ends_at <= self.now]
        self.in_flight = [request for request in self.in_flight if request.ends_at > self.now]
        for request in due:
            sim = self.backends.get(request.backend)
            if sim is None:
                continue  # removed: the balancer forgot it too
            ok = not sim.broken
            self.balancer.finished(request.backend, self.now, ok, latency_ms=1.0)
            self.books.finished[request.backend] += 1
            if not ok:
                self.books.failed[request.backend] += 1

    # ----- invariants ---------------------------------------------------------------------------

    def check_pick(self, chosen, candidates, panicking: bool) -> None:
        open_ = [s for s in self.backends.values() if not s.draining]
        if chosen is None:
            eligible = [
                s for s in open_ if self.balancer.state_of(s.backend.id, self.now) == "healthy"
            ]
            if eligible or (open_ and self.settings.panic_threshold_percent > 0):
                raise BalanceInvariantViolation(f"no pick with {len(open_)} open backends")
            return
        sim = self.backends[chosen.id]
        if sim.draining:
            raise BalanceInvariantViolation(f"picked draining {chosen.id}")
        state = self.balancer.state_of(chosen.id, self.now)
        if not panicking and state != "healthy":
            raise BalanceInvariantViolation(f"picked {chosen.id} ({state}) outside panic")
        if chosen.id not in {c.id for c in candidates}:
            raise BalanceInvariantViolation(f"picked {chosen.id}, not a candidate")
        if panicking:
            eligible = sum(
                self.balancer.state_of(s.backend.id, self.now) == "healthy" for s in open_
            )
            if eligible * 100 >= self.settings.panic_threshold_percent * len(open_):
                raise BalanceInvariantViolation(f"panic with {eligible} of {len(open_)} eligible")

    def check_ejections(self) -> None:
        """When one more is ejected, no more than the share are out (a share of the backends
        there are then: removing backends later does not bring the ejected back early)."""
        ejected = {b for b in self.backends if self.balancer.state_of(b, self.now) == "ejected"}
        allowed = max(1, len(self.backends) * self.settings.ejection.max_ejection_percent // 100)
        if ejected - self.was_ejected and len(ejected) > allowed:
            raise BalanceInvariantViolation(f"{len(ejected)} ejected, at most {allowed}")
        self.was_ejected = ejected

    def check_books(self) -> None:
        for row in self.balancer.stats(self.now):
            backend = row["id"]
            books = self.books
            expected_active = books.started[backend] - books.finished[backend]
            if row["active"] != expected_active or row["total"] != books.started[backend]:
                raise BalanceInvariantViolation(f"{backend}: counts {row} vs the books")
            if row["failures"] != books.failed[backend]:
                raise BalanceInvariantViolation(f"{backend}: failures {row['failures']}")

    # ----- running ------------------------------------------------------------------------------

    def run(self) -> None:
        for _ in range(FAULT_STEPS):
            self.step(faults=True)
        self.heal()
        settle_s = self.settings.ejection.max_ejection_s + self.settings.slow_start_s + 2
        for _ in range(int(settle_s / STEP_S)):
            self.step(faults=False)
        states = {b: self.balancer.state_of(b, self.now) for b in self.backends}
        if set(states.values()) != {"healthy"}:
            raise BalanceInvariantViolation(f"not every backend back after healing: {states}")
        self.check_weighted_shares()

    def check_weighted_shares(self) -> None:
        """With everything idle and eligible, a weight-following strategy's picks follow the
        weights: exactly over whole rounds for `weighted`, within 3 points for `random`."""
        if self.strategy not in ("weighted", "random") or not self.backends:
            return
        for request in self.in_flight:
            self.balancer.finished(request.backend, self.now, True)
        self.in_flight = []
        total_weight = sum(sim.backend.weight for sim in self.backends.values())
        rounds = 200 if self.strategy == "weighted" else 2000
        counts = Counter(self.balancer.pick(self.now).id for _ in range(rounds * total_weight))
        for backend_id, sim in self.backends.items():
            share = counts[backend_id] / (rounds * total_weight)
            expected = sim.backend.weight / total_weight
            tolerance = 1e-9 if self.strategy == "weighted" else 0.03
            if abs(share - expected) > tolerance:
                raise BalanceInvariantViolation(
                    f"{backend_id}: share {share:.3f} of {expected:.3f}"
                )


def run_balance_seed(seed: int) -> BalanceWorld:
    world = BalanceWorld(seed)
    try:
        world.run()
    except Exception as error:
        tail = "\n".join(world.trace[-12:])
        raise BalanceInvariantViolation(
            f"seed {seed} ({world.strategy}, {world.settings}) failed (replay with SEED={seed}): "
            f"{error}\n{tail}"
        ) from error
    return world
