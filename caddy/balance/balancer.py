"""One service's balancer: its backends, their state and statistics, and the pick.

Eligible for a pick: a backend that is healthy (its checks and its node's gossip say so),
not ejected (`caddy.balance.outliers`) and not draining. When fewer than
`panic_threshold_percent` of the backends that are not draining are eligible, the pick spreads
over all of those instead (Envoy's panic threshold: better to try a backend that may be
unhealthy than to pile every request on the few left). A backend that joins, recovers or
returns from an ejection starts slowly: its weight ramps from a tenth to the whole over
`slow_start_s` (HAProxy's slowstart, Envoy's slow start mode).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from caddy.balance.histogram import LatencyHistogram
from caddy.balance.outliers import EjectionSettings, OutlierDetector
from caddy.balance.strategies import Candidate, strategy

SLOW_START_FLOOR = 0.1  # a slowly starting backend's weight starts at this fraction


@dataclass(frozen=True, slots=True)
class BalanceSettings:
    slow_start_s: float = 10.0  # 0: none
    panic_threshold_percent: int = 50  # 0: never panic
    ejection: EjectionSettings = field(default_factory=EjectionSettings)


@dataclass(frozen=True, slots=True)
class Backend:
    """A backend as the registry holds it."""

    id: str
    address: str
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Pick:
    id: str
    address: str


@dataclass(slots=True)
class _State:
    backend: Backend
    since: float  # when its state last changed
    healthy: bool = True
    draining: bool = False
    ramp_from: float | None = None  # start of its slow start, if it had one
    picks: int = 0
    active: int = 0
    total: int = 0
    failures: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    last_state: str = "healthy"


class Balancer:
    """Feed it the backends (`update`), their health (`set_healthy`), drains (`set_draining`)
    and what became of each use (`started`, `finished`, `report`); ask `pick`."""

    def __init__(self, strategy_name: str, settings: BalanceSettings, rng: random.Random) -> None:
        self.strategy_name = strategy_name
        self._strategy = strategy(strategy_name)
        self.settings = settings
        self._rng = rng
        self._outliers = OutlierDetector(settings.ejection)
        self._states: dict[str, _State] = {}  # in id order
        self._updated = False

    # ----- what it is told ----------------------------------------------------------------------

    def update(self, backends: Iterable[Backend], now: float) -> None:
        """The registry's backends now: new ones start slowly (except the first set), gone ones
        are forgotten, the others take their new address and weight."""
        wanted = {backend.id: backend for backend in backends}
        states = {}
        for backend_id in sorted(wanted):
            state = self._states.get(backend_id)
            if state is None:
                state = _State(wanted[backend_id], since=now)
                if self._updated:
                    state.ramp_from = now
            else:
                state.backend = wanted[backend_id]
            states[backend_id] = state
        for gone in self._states.keys() - wanted.keys():
            self._outliers.forget(gone)
        self._states = states
        self._updated = True

    def set_healthy(self, backend_id: str, healthy: bool, now: float) -> None:
        state = self._states.get(backend_id)
        if state is None or state.healthy == healthy:
            return
        state.healthy = healthy
        if healthy:
            state.ramp_from = now
        self._note_state(state, now)

    def set_draining(self, backend_id: str, draining: bool, now: float) -> None:
        state = self._states.get(backend_id)
        if state is not None and state.draining != draining:
            state.draining = draining
            self._note_state(state, now)

    def started(self, backend_id: str) -> None:
        """A connection or request to it began."""
        state = self._states.get(backend_id)
        if state is not None:
            state.active += 1
            state.total += 1

    def finished(
        self,
        backend_id: str,
        now: float,
        ok: bool,
        latency_ms: float | None = None,
        bytes_in: int = 0,
        bytes_out: int = 0,
    ) -> None:
        """It ended: `ok` or failed (a failure counts toward its ejection)."""
        state = self._states.get(backend_id)
        if state is None:
            return
        state.active = max(0, state.active - 1)
        state.bytes_in += bytes_in
        state.bytes_out += bytes_out
        if latency_ms is not None:
            state.latency.record(latency_ms)
        self.report(backend_id, ok, now)

    def report(self, backend_id: str, ok: bool, now: float) -> None:
        """A caller's outcome with it, for a use not tracked by `started`/`finished`."""
        state = self._states.get(backend_id)
        if state is None:
            return
        if ok:
            self._outliers.success(backend_id)
            return
        state.failures += 1
        if self._outliers.failure(backend_id, now, len(self._states)):
            self._note_state(state, now)

    # ----- the pick -------------------------------------------------------------------------------

    def pick(
        self, now: float, key: str | None = None, exclude: frozenset[str] = frozenset()
    ) -> Pick | None:
        """The backend for the next request or connection (`key`: for `ip_hash`, the client's
        address; `exclude`: backends that just failed this request, for its retry); None when
        every backend drains, or is excluded (or there is none)."""
        candidates = [c for c in self.candidates(now) if c.id not in exclude]
        if not candidates:
            return None
        chosen = self._states[self._strategy.choose(candidates, key, self._rng)]
        chosen.picks += 1
        return Pick(chosen.backend.id, chosen.backend.address)

    def candidates(self, now: float) -> list[Candidate]:
        """Who a pick chooses among now, in id order (the panic threshold applied)."""
        open_ = [state for state in self._states.values() if not state.draining]
        eligible = [state for state in open_ if self._eligible(state, now)]
        if self.panicking(now, len(eligible), len(open_)):
            eligible = open_
        return [
            Candidate(s.backend.id, s.backend.weight, self._weight_now(s, now), s.active)
            for s in eligible
        ]

    def panicking(self, now: float, eligible: int | None = None, open_: int | None = None) -> bool:
        """Fewer than the threshold's share of the backends not draining are eligible."""
        if eligible is None or open_ is None:
            states = [state for state in self._states.values() if not state.draining]
            open_ = len(states)
            eligible = sum(self._eligible(state, now) for state in states)
        return open_ > 0 and eligible * 100 < self.settings.panic_threshold_percent * open_

    def _eligible(self, state: _State, now: float) -> bool:
        return state.healthy and not self._outliers.ejected(state.backend.id, now)

    def _weight_now(self, state: _State, now: float) -> float:
        weight = float(state.backend.weight)
        window = self.settings.slow_start_s
        if window <= 0:  # every pick asks: the common case first
            return weight
        started = state.ramp_from
        returned = self._outliers.returned_at(state.backend.id)
        if returned is not None and (started is None or returned > started):
            started = returned
        if started is None or now - started >= window:
            return weight
        return weight * max(SLOW_START_FLOOR, (now - started) / window)

    # ----- what it shows --------------------------------------------------------------------------

    def state_of(self, backend_id: str, now: float) -> str:
        """healthy | unhealthy | ejected | draining (CONTRACT 7)."""
        state = self._states[backend_id]
        if state.draining:
            return "draining"
        if self._outliers.ejected(backend_id, now):
            return "ejected"
        return "healthy" if state.healthy else "unhealthy"

    def stats(self, now: float) -> list[dict[str, Any]]:
        """Per backend, in id order: the fields of `caddy-ctl backends` and more."""
        rows = []
        for backend_id, state in self._states.items():
            self._note_state(state, now)
            rows.append(
                {
                    "id": backend_id,
                    "address": state.backend.address,
                    "weight": state.backend.weight,
                    "weight_now": round(self._weight_now(state, now), 3),
                    "state": state.last_state,
                    "since": state.since,
                    "picks": state.picks,
                    "active": state.active,
                    "total": state.total,
                    "failures": state.failures,
                    "bytes_in": state.bytes_in,
                    "bytes_out": state.bytes_out,
                    "latency_p50_ms": state.latency.quantile(0.5),
                    "latency_p99_ms": state.latency.quantile(0.99),
                }
            )
        return rows

    def _note_state(self, state: _State, now: float) -> None:
        shown = self.state_of(state.backend.id, now)
        if shown != state.last_state:
            state.last_state, state.since = shown, now
