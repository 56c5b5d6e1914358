"""The TCP proxy of a node's services (`listen` in the topology, CONTRACT 7): one asyncio event
loop on a thread of its own serves every listening service of the node, never a thread per
connection. A connection is accepted, a backend picked for it (the client's IP as the
`ip_hash` key), bytes copied both ways until either side closes; a backend that refuses the
connection counts as a failure (outlier ejection) and the connection is tried once more on
another backend. The balancers are shared with the BalancerActor behind one lock (`Locked`):
a pick is a few microseconds, far below a connection's cost. The bytes are relayed by
protocols (`_Side`: what one end receives is written to the other, reading paused while the
other end's buffer is full), not by a coroutine per direction: a third of the CPU per
request of streams, measured with bench/balance.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from urllib.parse import urlsplit

from caddy.balance import Balancer

log = logging.getLogger(__name__)

CHUNK_BYTES = 65536
CONNECT_TIMEOUT_S = 2.0
ATTEMPTS = 2  # the first pick, and one more when its backend refuses


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when CADDY_PROXY_LOOP is not "asyncio" and uvloop is installed (measured
    faster: bench/balance.py), else asyncio's own."""
    if os.environ.get("CADDY_PROXY_LOOP") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class Locked:
    """A balancer used from two threads, the BalancerActor's and the proxy's event loop:
    `with locked as balancer: ...`."""

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer
        self._lock = threading.Lock()

    def __enter__(self) -> Balancer:
        self._lock.acquire()
        return self.balancer

    def __exit__(self, *_: object) -> None:
        self._lock.release()


class _Side(asyncio.Protocol):
    """One end of a relayed connection: what arrives is written to the other end; an end's
    EOF is passed on (half-close); once both ends sent EOF, or either was lost, both close."""

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.received = 0
        self.eof = False
        self.early: list[bytes] = []  # what arrived before the other end was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.other is None:
            self.early.append(data)
        else:
            self.other.transport.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.eof = True
        if self.other is not None:
            self.pass_eof()
        return True  # keep our end open: the other direction may still be sending

    def link(self, other: _Side) -> None:
        """Connect this end to `other`, passing on what arrived meanwhile."""
        self.other = other
        for data in self.early:
            other.transport.write(data)  # type: ignore[union-attr]
        self.early = []
        if self.eof:
            self.pass_eof()

    def pass_eof(self) -> None:
        other = self.other
        if other.transport is not None and other.transport.can_write_eof():  # type: ignore[union-attr]
            other.transport.write_eof()  # type: ignore[union-attr]
        if other.eof:  # type: ignore[union-attr]
            self.relay.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close()

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()


class _ClientSide(_Side):
    """The client's end: reads nothing until its backend is connected."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # type: ignore[attr-defined]
        self.relay.proxy.connect_soon(self.relay)


class _Relay:
    """A client connection and, once connected, its backend's: where they stand."""

    def __init__(self, proxy: TcpProxy, service: str) -> None:
        self.proxy = proxy
        self.service = service
        self.client: _Side = _ClientSide(self)
        self.backend: _Side | None = None
        self.backend_id: str | None = None
        self.started = 0.0
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for side in (self.client, self.backend):
            if side is not None and side.transport is not None:
                side.transport.close()
        self.proxy.ended(self)


class TcpProxy:
    """Serves `listen` (service -> tcp://HOST:PORT) with the services' balancers; `start()`
    binds every address (raising if one cannot be bound), `stop()` closes everything."""

    def __init__(self, node_id: str, listen: dict[str, str], balancers: dict[str, Locked]) -> None:
        self._node_id = node_id
        self._listen = listen
        self._balancers = balancers
        self._loop = new_event_loop()
        self._servers: list[asyncio.base_events.Server] = []
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"caddy-proxy-{node_id}", daemon=True
        )
        self._endpoints: dict[str, tuple[str | None, int | None]] = {}  # loop thread only
        # Open relays by (service, backend). Loop thread only.
        self._open: dict[tuple[str, str], set[_Relay]] = {}

    def start(self) -> None:
        self._thread.start()
        for service, address in self._listen.items():
            parts = urlsplit(address)
            serving = self._loop.create_server(
                functools.partial(self._accepted, service),
                parts.hostname,
                parts.port,
                reuse_address=True,
                backlog=1024,
            )
            server = asyncio.run_coroutine_threadsafe(serving, self._loop).result(timeout=10)
            self._servers.append(server)
            log.info("node %s: proxying %s on %s", self._node_id, service, address)

    def stop(self) -> None:
        async def close() -> None:
            for server in self._servers:
                server.close()
            for relays in self._open.values():
                for relay in list(relays):
                    relay.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def _accepted(self, service: str) -> _Side:
        return _Relay(self, service).client

    def connect_soon(self, relay: _Relay) -> None:
        self._loop.create_task(self._connect(relay))

    async def _connect(self, relay: _Relay) -> None:
        """Pick a backend and connect to it, once more on another when it refuses."""
        locked = self._balancers[relay.service]
        peer = relay.client.transport.get_extra_info("peername")  # type: ignore[union-attr]
        key = peer[0] if peer else None
        refused: frozenset[str] = frozenset()
        for _ in range(ATTEMPTS):
            now = time.monotonic()
            with locked as balancer:
                chosen = balancer.pick(now, key, exclude=refused)
                if chosen is not None:
                    balancer.started(chosen.id)
            if chosen is None or relay.closed:
                break
            host, port = self._endpoint(chosen.address)
            backend = _Side(relay)
            try:
                async with asyncio.timeout(
                    CONNECT_TIMEOUT_S
                ):  # no task of its own, unlike wait_for
                    await self._loop.create_connection(lambda b=backend: b, host, port)
            except (TimeoutError, OSError):
                with locked as balancer:
                    balancer.finished(chosen.id, time.monotonic(), ok=False)
                refused |= {chosen.id}
                continue
            relay.backend, relay.backend_id, relay.started = backend, chosen.id, now
            self._open.setdefault((relay.service, chosen.id), set()).add(relay)
            if relay.closed:  # the client left while we connected
                relay.closed = False
                relay.close()
                return
            backend.link(relay.client)
            relay.client.link(backend)
            relay.client.transport.resume_reading()  # type: ignore[union-attr]
            return
        relay.close()

    def _endpoint(self, address: str) -> tuple[str | None, int | None]:
        """(host, port) of a backend's tcp://HOST:PORT, parsed once."""
        found = self._endpoints.get(address)
        if found is None:
            parts = urlsplit(address)
            found = self._endpoints[address] = (parts.hostname, parts.port)
        return found

    def ended(self, relay: _Relay) -> None:
        """A relay closed: its backend's statistics are told."""
        if relay.backend_id is None:
            return
        self._open.get((relay.service, relay.backend_id), set()).discard(relay)
        now = time.monotonic()
        with self._balancers[relay.service] as balancer:
            balancer.finished(
                relay.backend_id,
                now,
                ok=True,
                latency_ms=(now - relay.started) * 1000,
                bytes_in=relay.backend.received if relay.backend is not None else 0,
                bytes_out=relay.client.received,
            )

    def cut(self, service: str, backend: str) -> None:
        """Close every open connection to `backend` of `service` (a drain that timed out);
        from any thread."""
        self._loop.call_soon_threadsafe(self._cut, service, backend)

    def _cut(self, service: str, backend: str) -> None:
        relays = self._open.get((service, backend), set())
        if relays:
            log.info(
                "node %s: closing %d connections to drained %s/%s",
                self._node_id,
                len(relays),
                service,
                backend,
            )
        for relay in list(relays):
            for side in (relay.client, relay.backend):
                if side is not None and side.transport is not None:
                    side.transport.abort()  # at once, unflushed: the drain's time is up
