"""`BalancerActor`: runs one `caddy.balance.Balancer` per service of the topology, fed by the
replicated registry (`registry.changed` events), its own active checks of every backend (a TCP
connect, or an HTTP GET; `failure_threshold` results in a row change a verdict, the hysteresis
of `caddy.failover.HealthHistory`) and the outcomes callers report; answers picks.

Client requests (on the client port): `balance.pick` {service, key?} -> {id, address};
`balance.report` {service, backend, ok} (a caller's outcome, for outlier ejection). The
`balancer` status section holds every backend's state and statistics. A service that
`listen`s on this node is proxied here (`actors.tcp_proxy`), on the same balancers.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pykka

from actors.health_checks import http_check, tcp_check
from actors.status_board import StatusBoard
from actors.tcp_proxy import Locked, TcpProxy
from actors.ticker import Tick
from actors.transport import Inbound, Transport
from caddy.balance import Backend, Balancer, BalanceSettings
from caddy.config import ClusterConfig, ServiceConfig
from caddy.events import RegistryChanged
from caddy.failover import Health, HealthHistory
from caddy.replication.replies import ERROR_KIND, OK_KIND, ok_body, refusal_body

log = logging.getLogger(__name__)

TICK_MS = 100
EVENTS_TOLD = (RegistryChanged.kind,)
MAX_CHECK_TIMEOUT_S = 1.0
CHECK_THREADS = 4
REFUSED = "refused"  # the code of a pick or report the balancer cannot answer


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One active check of one backend: passed, or why not."""

    service: str
    backend: str
    passed: bool
    reason: str


class BalancerActor(pykka.ThreadingActor):
    """Told `Tick()` every TICK_MS, `registry.changed` events and `balance.*` requests."""

    def __init__(
        self,
        config: ClusterConfig,
        node_id: str,
        transport: Transport,
        board: StatusBoard,
        registry: Callable[[], dict[str, Any] | None],
    ) -> None:
        """`registry()`: the registry's status section as it is now (read at start: events
        published before this actor subscribed are not told to it)."""
        super().__init__()
        self._node_id = node_id
        self._transport = transport
        self._services = {service.name: service for service in config.services}
        self._balancers = {
            service.name: Locked(Balancer(service.strategy, _settings(service), random.Random()))
            for service in config.services
        }
        self._histories: dict[tuple[str, str], HealthHistory] = {}
        self._next_round = dict.fromkeys(self._services, 0.0)
        self._checking: dict[str, int] = {}  # checks of a service's round still running
        self._pool = ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix=f"caddy-lb-{node_id}")
        self._version = -1
        now = time.monotonic()
        for service in config.services:  # until the registry is seeded: the topology's
            with self._balancers[service.name] as balancer:
                balancer.update((Backend(b.id, b.address, b.weight) for b in service.backends), now)
        current = registry()
        if current and current.get("seeded"):
            self._adopt_document(current)
        listen = {
            service.name: address
            for service in config.services
            for node, address in service.listen
            if node == node_id
        }
        self._proxy = TcpProxy(node_id, listen, self._balancers) if listen else None
        if self._proxy is not None:
            self._proxy.start()
        self._section = self._status()
        board.contribute("balancer", lambda: self._section)

    def on_stop(self) -> None:
        if self._proxy is not None:
            self._proxy.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ----- mailbox ------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Tick):
            self._start_due_rounds()
            self._end_drains()
        elif isinstance(message, CheckResult):
            left = self._checking.get(message.service, 1) - 1
            if left <= 0:
                self._checking.pop(message.service, None)
            else:
                self._checking[message.service] = left
            self._judge(message)
        elif isinstance(message, RegistryChanged):
            if message.version != self._version:
                self._adopt(message.version, message.services)
        elif isinstance(message, Inbound) and message.route is not None:
            kind, body = self._answer(message.envelope.kind, message.envelope.body)
            self._transport.reply(message.route, kind, body)
            return
        else:
            return
        self._section = self._status()

    # ----- the registry -------------------------------------------------------------------------

    def _adopt_document(self, document: dict[str, Any]) -> None:
        services = tuple(
            (name, tuple((b["id"], b["address"], b["weight"], b["draining"]) for b in backends))
            for name, backends in document["services"].items()
        )
        self._adopt(document["version"], services)

    def _adopt(
        self, version: int, services: Iterable[tuple[str, Iterable[tuple[str, str, int, bool]]]]
    ) -> None:
        now = time.monotonic()
        registered = {name: tuple(backends) for name, backends in services}
        for name, locked in self._balancers.items():
            backends = registered.get(name, ())
            with locked as balancer:
                balancer.update((Backend(b, at, weight) for b, at, weight, _ in backends), now)
                for backend, _, _, draining in backends:
                    balancer.set_draining(backend, draining, now)
        self._version = version

    # ----- active checks --------------------------------------------------------------------------

    def _start_due_rounds(self) -> None:
        now = time.monotonic()
        for name, service in self._services.items():
            if name in self._checking or now < self._next_round[name]:
                continue
            interval_s = service.health.interval_ms / 1000
            self._next_round[name] = now + interval_s
            with self._balancers[name] as balancer:
                targets = [(row["id"], row["address"]) for row in balancer.stats(now)]
            if not targets:
                continue
            self._checking[name] = len(targets)
            timeout_s = min(interval_s, MAX_CHECK_TIMEOUT_S)
            for backend, address in targets:
                self._pool.submit(
                    self._check, name, backend, address, timeout_s, service.health.http
                )

    def _check(
        self, service: str, backend: str, address: str, timeout_s: float, http_path: str
    ) -> None:
        """On a pool thread: one check, its result told to the actor."""
        passed, reason = check_backend(address, timeout_s, http_path)
        self.actor_ref.tell(CheckResult(service, backend, passed, reason))

    def _judge(self, result: CheckResult) -> None:
        locked = self._balancers.get(result.service)
        service = self._services.get(result.service)
        if locked is None or service is None:
            return
        now = time.monotonic()
        key = (result.service, result.backend)
        history = self._histories.get(key)
        if history is None:
            history = self._histories[key] = HealthHistory(service.health.failure_threshold)
        if history.record(result.passed, now, result.reason):
            healthy = history.state is Health.HEALTHY
            if not healthy:
                log.warning(
                    "node %s: backend %s/%s unhealthy: %s",
                    self._node_id,
                    result.service,
                    result.backend,
                    result.reason,
                )
            with locked as balancer:
                balancer.set_healthy(result.backend, healthy, now)

    def _end_drains(self) -> None:
        """The proxy's open connections to a backend drained longer than its service's drain
        timeout are closed."""
        if self._proxy is None:
            return
        now = time.monotonic()
        for name, locked in self._balancers.items():
            timeout_s = self._services[name].drain_timeout_ms / 1000
            with locked as balancer:
                rows = balancer.stats(now)
            for row in rows:
                if row["state"] == "draining" and row["active"] and now - row["since"] >= timeout_s:
                    self._proxy.cut(name, row["id"])

    # ----- requests -------------------------------------------------------------------------------

    def _answer(self, kind: str, body: Any) -> tuple[str, dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("service"), str):
            return ERROR_KIND, refusal_body("bad request: which service?", REFUSED)
        locked = self._balancers.get(body["service"])
        if locked is None:
            known = ", ".join(sorted(self._balancers)) or "none"
            return ERROR_KIND, refusal_body(
                f"no service {body['service']!r} (services: {known})", REFUSED
            )
        now = time.monotonic()
        if kind == "balance.pick":
            key = body.get("key")
            if key is not None and not isinstance(key, str):
                return ERROR_KIND, refusal_body("bad request: a key is a string", REFUSED)
            with locked as balancer:
                chosen = balancer.pick(now, key)
            if chosen is None:
                return ERROR_KIND, refusal_body(f"{body['service']}: no backend to pick", REFUSED)
            self._section = self._status()
            return OK_KIND, ok_body({"id": chosen.id, "address": chosen.address})
        if kind == "balance.report" and isinstance(body.get("backend"), str):
            with locked as balancer:
                balancer.report(body["backend"], body.get("ok") is True, now)
            self._section = self._status()
            return OK_KIND, ok_body(None)
        return ERROR_KIND, refusal_body(f"bad request: {kind}", REFUSED)

    # ----- status ---------------------------------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        now = time.monotonic()
        section = {}
        for name, locked in self._balancers.items():
            with locked as balancer:
                section[name] = {
                    "strategy": balancer.strategy_name,
                    "panicking": balancer.panicking(now),
                    "backends": balancer.stats(now),
                }
        return section


def _settings(service: ServiceConfig) -> BalanceSettings:
    return BalanceSettings(
        slow_start_s=service.slow_start_ms / 1000,
        panic_threshold_percent=service.panic_threshold_percent,
    )


def check_backend(address: str, timeout_s: float, http_path: str = "") -> tuple[bool, str]:
    """(passed, why not) of one active check: a TCP connect to `address` (tcp://HOST:PORT),
    or, with `http_path`, an HTTP GET of it answered 2xx (`actors.health_checks`)."""
    target = address.removeprefix("tcp://")
    if http_path:
        failure = http_check(f"http://{target}{http_path}", timeout_s)
    else:
        failure = tcp_check(target, timeout_s)
    return failure is None, failure or ""
