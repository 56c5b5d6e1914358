"""The TCP proxy of a node's services (`listen` in the topology, CONTRACT 7): one asyncio event
loop on a thread of its own serves every listening service of the node, never a thread per
connection. A connection is accepted, a backend picked for it (the client's IP as the
`ip_hash` key), bytes copied both ways until either side closes; a backend that refuses the
connection counts as a failure (outlier ejection) and the connection is tried once more on
another backend. The balancers are shared with the BalancerActor behind one lock (`Locked`):
a pick is a few microseconds, far below a connection's cost.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from urllib.parse import urlsplit

from caddy.balance import Balancer

log = logging.getLogger(__name__)

CHUNK_BYTES = 65536
CONNECT_TIMEOUT_S = 2.0
ATTEMPTS = 2  # the first pick, and one more when its backend refuses


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


class TcpProxy:
    """Serves `listen` (service -> tcp://HOST:PORT) with the services' balancers; `start()`
    binds every address (raising if one cannot be bound), `stop()` closes everything."""

    def __init__(self, node_id: str, listen: dict[str, str], balancers: dict[str, Locked]) -> None:
        self._node_id = node_id
        self._listen = listen
        self._balancers = balancers
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.base_events.Server] = []
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"caddy-proxy-{node_id}", daemon=True
        )
        # Open connections by (service, backend): their two writers. Loop thread only.
        self._open: dict[tuple[str, str], set[tuple[asyncio.StreamWriter, ...]]] = {}

    def start(self) -> None:
        self._thread.start()
        for service, address in self._listen.items():
            parts = urlsplit(address)
            handler = functools.partial(self._serve, service)
            serving = asyncio.start_server(handler, parts.hostname, parts.port, reuse_address=True)
            server = asyncio.run_coroutine_threadsafe(serving, self._loop).result(timeout=10)
            self._servers.append(server)
            log.info("node %s: proxying %s on %s", self._node_id, service, address)

    def stop(self) -> None:
        async def close() -> None:
            for server in self._servers:
                server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    async def _serve(
        self, service: str, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        locked = self._balancers[service]
        peer = client_writer.get_extra_info("peername")
        try:
            backend = await self._connect(locked, peer[0] if peer else None)
            if backend is None:
                return
            backend_id, started, backend_reader, backend_writer = backend
            writers = (client_writer, backend_writer)
            open_here = self._open.setdefault((service, backend_id), set())
            open_here.add(writers)
            try:
                sent, received = await asyncio.gather(
                    _copy(client_reader, backend_writer), _copy(backend_reader, client_writer)
                )
            finally:
                open_here.discard(writers)
                backend_writer.close()
            now = time.monotonic()
            with locked as balancer:
                balancer.finished(
                    backend_id,
                    now,
                    ok=True,
                    latency_ms=(now - started) * 1000,
                    bytes_in=received,
                    bytes_out=sent,
                )
        finally:
            client_writer.close()

    def cut(self, service: str, backend: str) -> None:
        """Close every open connection to `backend` of `service` (a drain that timed out);
        from any thread."""
        self._loop.call_soon_threadsafe(self._cut, service, backend)

    def _cut(self, service: str, backend: str) -> None:
        connections = self._open.get((service, backend), set())
        if connections:
            log.info(
                "node %s: closing %d connections to drained %s/%s",
                self._node_id,
                len(connections),
                service,
                backend,
            )
        for writers in list(connections):
            for writer in writers:
                writer.transport.abort()  # at once, unflushed: the drain's time is up

    async def _connect(
        self, locked: Locked, key: str | None
    ) -> tuple[str, float, asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to a picked backend (started in its statistics), or None."""
        refused: frozenset[str] = frozenset()
        for _ in range(ATTEMPTS):
            now = time.monotonic()
            with locked as balancer:
                chosen = balancer.pick(now, key, exclude=refused)
                if chosen is not None:
                    balancer.started(chosen.id)
            if chosen is None:
                return None
            parts = urlsplit(chosen.address)
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(parts.hostname, parts.port), CONNECT_TIMEOUT_S
                )
            except (TimeoutError, OSError):
                with locked as balancer:
                    balancer.finished(chosen.id, time.monotonic(), ok=False)
                refused |= {chosen.id}
                continue
            return chosen.id, now, reader, writer
        return None


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Bytes from `reader` to `writer` until the reader's end closes; how many."""
    copied = 0
    try:
        while chunk := await reader.read(CHUNK_BYTES):
            writer.write(chunk)
            await writer.drain()
            copied += len(chunk)
    except (ConnectionError, OSError):
        pass
    finally:
        if writer.can_write_eof():
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                pass
    return copied
