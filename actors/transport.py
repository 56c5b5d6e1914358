"""The node's ZeroMQ I/O: one thread reads the peer and client ROUTERs and owns their sockets.

Inbound frames are decoded, checked and handed to the handler registered for their kind's prefix
(normally an actor's `tell`); a client's batch frame is handed on as the requests it carries. An
actor may read the routers on its own thread instead (`attach_reader`: the Raft actor does), with
this thread standing in while it is busy.
Outbound frames leave from whichever thread sends them, under a lock per socket (peer DEALERs are
send-only; the client ROUTER's lock is shared with the reader), which saves a thread wake-up per
message on the replication and reply paths.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import select
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pykka
import zmq
from zmq.utils.monitor import parse_monitor_message

from actors.drop_log import DropLog
from actors.status_board import StatusBoard
from caddy.config import ClusterConfig, TransportSettings
from caddy.errors import WireError
from caddy.wire import (
    BATCH_KIND,
    MAX_BATCH_ITEMS,
    REPLIES_KIND,
    Codec,
    Envelope,
    decode_envelope,
    unpack_batch,
)

log = logging.getLogger(__name__)

HEARTBEAT_KIND = "transport.heartbeat"
# Frames up to this many times the message limit reach the codec and are counted as oversized;
# ZeroMQ closes a connection that sends a larger one, which shows as a closed connection.
SOCKET_LIMIT_FACTOR = 2
# Socket monitors and the heartbeat timer are looked at on this tick, not on every wake-up, which
# would cost each monitor a mailbox check.
HOUSEKEEPING_MS = 20
DRAIN_BATCH = 256  # messages taken from one socket per wake-up, so one cannot starve the others
READER_STANDIN_MS = 20  # an attached reader busy for longer: the I/O thread reads in its place
# The routers' inbound queues have no limit (see `configure_router`): instead the I/O thread cuts a
# connection that holds more unread bytes than this many message limits (at least the floor),
# looking every BACKLOG_CHECK_MS.
INBOUND_BACKLOG_FACTOR = 4
INBOUND_BACKLOG_FLOOR = 16 * 1024 * 1024
BACKLOG_CHECK_MS = 50
# Drops of frames that no correct peer or client of this version sends: the connection that sent
# one is cut, and what else it queued is dropped unread (a flood from one connection costs one
# decode). An unknown kind from a peer is not among them: a newer peer may send one.
_HOSTILE_DROPS = frozenset(
    {
        "oversized",
        "malformed",
        "foreign-cluster",
        "unknown-sender",
        "frame-count",
        "raft-body",
        "swim-body",
        "batch-malformed",
        "batch-item-malformed",
        "batch-nested",
        "batch-too-long",
    }
)
MAX_REFUSED_CONNECTIONS = 4096  # routing ids remembered per router as cut (the oldest go first)
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close(2) resets the connection
# Bytes of a connection that no reader sees: ZMTP's greeting and handshake, then its heartbeats.
_UNREAD_SLACK = 4096
_UNREAD_SLACK_PER_S = 16
_SRCFD = int(zmq.SRCFD)
_TCPI_BYTES_RECEIVED = struct.Struct("=Q")  # at offset 128 of Linux's struct tcp_info
MAX_HEARTBEAT_TTL_MS = 6_553_500  # ZMTP carries the TTL in deciseconds, in 16 bits
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
# Drops that are no bad inbound frame (a client gone, the node stopping) or that have a line of
# their own: counted, but not given a line by the drop log.
_UNLOGGED_DROPS = frozenset(
    {
        "reply-undeliverable",
        "reply-unencodable",
        "receiver-stopped",
        "handler-error",
        "cut-connection",  # the frame that got the connection cut had its line
    }
)
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class ClientRoute(NamedTuple):
    """Where a client request came from, so that its response can be routed back. Answers to
    requests that came in a batch frame go back together in `REPLIES_KIND` frames.

    This, `Inbound` and `Envelope` are NamedTuples, as immutable as frozen dataclasses at under
    half their construction cost: one of each is built for every client request."""

    identity: bytes
    request_id: int
    batched: bool = False


class Inbound(NamedTuple):
    """A decoded inbound message; `route` is set for client requests, None for peer messages,
    whose `connection` is the routing id they came from (for `count_body_drop`)."""

    envelope: Envelope
    route: ClientRoute | None = None
    connection: bytes = b""

    @property
    def source(self) -> tuple[bool, bytes]:
        """(came in on the client port, routing id) of the connection it came from."""
        route = self.route
        return (True, route.identity) if route is not None else (False, self.connection)


@dataclass(frozen=True, slots=True)
class InboundBatch:
    """Inbound messages read in one wake-up, for a handler registered with `batched=True`.

    One `tell` per batch instead of per message: each tell wakes the actor's thread, and a thread
    wake-up costs more than the handling of a small message.
    """

    messages: list[Inbound]


Handler = Callable[[Any], None]


@dataclass(slots=True)
class PeerStats:
    """What the transport knows of one peer; `hearing` means a frame arrived recently.

    The outbound counters change under the peer's lock, by whichever thread sends. The inbound
    ones are bumped by the I/O thread without a lock, which would cost every message several
    microseconds, so a copy may be one message apart between them.
    """

    peer: str
    address: str
    connected: bool = False
    hearing: bool = False
    last_heard_s: float | None = None  # seconds since the last frame from this peer
    msgs_in: int = 0
    bytes_in: int = 0
    msgs_out: int = 0
    bytes_out: int = 0
    drops_out: int = 0


@dataclass(slots=True)
class _Peer:
    """One outbound link. `lock` serializes the threads that send on `socket` (ZeroMQ sockets
    are not thread-safe; a mutex gives each use the memory barrier ZeroMQ asks for)."""

    stats: PeerStats
    socket: zmq.Socket
    monitor: zmq.Socket
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    last_heard: float | None = None
    msgs_out_at_heartbeat: int = -1  # msgs_out when the heartbeat timer last fired


@dataclass(slots=True)
class _Connection:
    """An accepted connection of a router, as its monitor announced it, for the backlog check
    (`Transport._check_backlogs`)."""

    peer: Any  # getpeername(): a recycled descriptor shows another address
    since: float
    read: int = 0  # ZMTP bytes of the frames that readers took from it
    cut: bool = False


_monitor_ids = itertools.count()


def _monitor(sock: zmq.Socket, events: int) -> zmq.Socket:
    """A monitor on a unique inproc address (pyzmq's default name reuses recycled fds)."""
    return sock.get_monitor_socket(events, addr=f"inproc://caddy-monitor-{next(_monitor_ids)}")


def configure_router(router: zmq.Socket, settings: TransportSettings) -> None:
    """The options of a node's peer and client routers.

    libzmq 4.3.5 aborts the process (`!_io_error`, stream_engine_base.cpp:310) when it has stopped
    reading a connection, the connection is then reset, and something writes to it: the router's
    own heartbeat timer, or a PING read once reading resumes. It stops reading a connection whose
    queue is full or gone. So the routers have no queue limit (the backlog check in `Transport`
    bounds the queues instead), send no heartbeats (the DEALERs do, with a TTL, and the kernel's
    keepalive finds dead peers), and let a duplicate routing id take the older connection's place
    (handover) rather than queue unread for good. README, "The ZeroMQ abort".
    """
    keepalive_s = max(1, settings.keep_alive_ms // 1000)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.MAXMSGSIZE, settings.max_message_bytes * SOCKET_LIMIT_FACTOR)
    router.setsockopt(zmq.SNDHWM, settings.send_hwm)
    router.setsockopt(zmq.RCVHWM, 0)
    router.setsockopt(zmq.ROUTER_HANDOVER, 1)
    router.setsockopt(zmq.HANDSHAKE_IVL, settings.connect_timeout_ms)  # cut half-open garbage
    router.setsockopt(zmq.TCP_KEEPALIVE, 1)
    router.setsockopt(zmq.TCP_KEEPALIVE_IDLE, keepalive_s)
    router.setsockopt(zmq.TCP_KEEPALIVE_INTVL, keepalive_s)
    router.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)


def link_routing_id(node_id: str) -> bytes:
    """The routing id of a new DEALER of `node_id`'s: the node id, NUL, 8 random bytes. The peer's
    router gives a routing id that is already connected to the newer connection (handover), so
    an id that anyone can name would let anyone take this link's place there."""
    return node_id.encode()[:240] + b"\0" + os.urandom(8)


def connect_endpoint(own_address: str, peer_address: str) -> str:
    """`tcp://SRC:0;DST:PORT` when our own address names a specific IP, so that firewall
    rules between node addresses mean what they say."""
    own_host = urlsplit(own_address).hostname or ""
    parts = own_host.split(".")
    is_ipv4 = len(parts) == 4 and all(p.isdigit() for p in parts)
    if not is_ipv4 or own_host == "0.0.0.0":
        return peer_address
    return f"tcp://{own_host}:0;{peer_address.removeprefix('tcp://')}"


class Transport:
    """All ZeroMQ I/O of one node. Every public method is thread-safe.

    Handlers run on the I/O thread and must not block: they should `tell` an actor.
    """

    def __init__(self, config: ClusterConfig, node_id: str, context: zmq.Context | None = None):
        self._config = config
        self._node = config.node(node_id)
        self._settings = config.transport
        self.node_id = node_id
        self.codec = Codec(
            cluster=config.cluster,
            sender=node_id,
            max_message_bytes=self._settings.max_message_bytes,
            compress_threshold=(
                config.replication.compression_threshold_bytes
                if config.replication.compression
                else None
            ),
        )
        self._context = context or zmq.Context.instance()
        self._handlers: dict[str, Handler] = {}  # by kind prefix, for the peer port
        self._client_handlers: dict[str, Handler] = {}  # ... and for the client port
        self._batched: set[Handler] = set()
        # (peer, kind, body) sent before the sockets were open; deque appends/pops are atomic.
        self._outbox: deque[tuple[str, str, Mapping[str, Any]]] = deque()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._wake_fd_lock = threading.Lock()
        self._wake_pending = False
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._io_thread_id: int | None = None
        self._lock = threading.Lock()  # guards the stats others read, but see PeerStats
        self._peers: dict[str, _Peer] = {}
        self._adding: dict[str, str] = {}  # peers to connect to, by id: their addresses
        self._monitors: zmq.Poller | None = None  # the loop's, once it runs
        self._monitor_handlers: dict[zmq.Socket, Callable[[], None]] = {}
        self._sockets_open = False  # set once `_peers` is complete; then senders send directly
        self._woken_at = 0.0  # when the I/O thread last woke: the arrival time of what it reads
        self._client_sent = False  # the client router was sent on since its last failed receive
        self._client_lock = threading.Lock()  # replies leave from the actors' threads
        self._peer_router_lock = threading.Lock()  # the I/O thread, or an attached reader
        # An actor's thread that reads the routers itself (see `attach_reader`), saving the
        # hand-over from this thread to it for every message it handles.
        self._reader: Handler | None = None
        self._reader_wake: Callable[[], None] = lambda: None
        self._reader_thread: int | None = None
        self._reader_busy_since: float | None = None  # None: waiting for input
        # Held through a drain and the delivery of what it read, so that a reader never reads
        # newer messages while a stand-in still holds older ones (one peer's order is kept).
        self.drain_lock = threading.Lock()
        self._router_fds: tuple[int, int] = (-1, -1)
        self._client_open = False
        self._routers_open = False  # under both router locks once open
        self.dropped: Counter[str] = Counter()  # inbound drops by reason (outbound: PeerStats)
        # ... and by known peer (a client or an unknown sender: by reason only, so that forged
        # names grow nothing); each reason's first drop per peer, then one per interval, logged.
        peer_ids = [peer.id for peer in config.peers_of(node_id)]
        self._peer_drops: dict[str, Counter[str]] = {peer_id: Counter() for peer_id in peer_ids}
        self._identity_peers = {peer_id.encode(): peer_id for peer_id in peer_ids}
        self._drop_log = DropLog(node_id, log)
        self.closed_connections = 0  # inbound connections closed, by their peer or by ZeroMQ
        # Per router (peer, client): what readers took since the I/O thread last looked, by
        # routing id ([descriptor, ZMTP bytes]), and the accepted connections, by descriptor.
        self._unread_limit = max(
            INBOUND_BACKLOG_FLOOR, INBOUND_BACKLOG_FACTOR * self._settings.max_message_bytes
        )
        self._reads: list[dict[bytes, list[int]]] = [{}, {}]
        # Per router: routing ids of connections cut for a hostile frame; True once shut down.
        self._refused: list[dict[bytes, bool]] = [{}, {}]
        self._connections: list[dict[int, _Connection]] = [{}, {}]
        self.started_at = time.monotonic()
        self._startup_error: BaseException | None = None

    # ----- set-up -----------------------------------------------------------------------------

    def register(
        self, kind_prefix: str, handler: Handler, batched: bool = False, *, port: str = "both"
    ) -> None:
        """Deliver every inbound kind `PREFIX.*` that arrives on `port` ("peer", "client" or
        "both") to `handler`. Register before `start()`.

        With `batched`, the handler gets an `InboundBatch` of what one drain of the sockets read
        (prefixes registered with the same handler share a batch); otherwise one `Inbound` each.
        """
        if port not in ("peer", "client", "both"):
            raise ValueError(f"port must be peer, client or both, not {port!r}")
        if port != "client":
            self._handlers[kind_prefix] = handler
        if port != "peer":
            self._client_handlers[kind_prefix] = handler
        if batched:
            self._batched.add(handler)

    def start(self) -> None:
        """Bind and connect every socket in the I/O thread; raises if binding failed."""
        self._thread = threading.Thread(
            target=self._run, name=f"caddy-io-{self.node_id}", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._wake_fd_lock:
            if self._wake_fd >= 0:
                os.close(self._wake_fd)
                self._wake_fd = -1

    # ----- what other threads call ------------------------------------------------------------

    def send(self, peer: str, kind: str, body: Mapping[str, Any]) -> bool:
        """Send one message to a peer from the calling thread; never blocks. Returns False when
        it was dropped (counted): the peer is not connected or not keeping up. Before `start()`
        has opened the sockets, messages are queued (True)."""
        if self._sockets_open:
            return self._send_to_peer(peer, kind, body)
        self._outbox.append((peer, kind, body))
        self._wake()
        return True

    def reply(self, route: ClientRoute, kind: str, body: Mapping[str, Any]) -> None:
        """Answer a client request; the response carries the request's correlation id."""
        self.reply_many([(route, kind, body)])

    def reply_many(self, replies: Iterable[tuple[ClientRoute, str, Mapping[str, Any]]]) -> None:
        """Answer client requests from the calling thread; never blocks. Undeliverable and
        unencodable replies are counted as drops.

        Answers to a client's batched requests leave together, in order, in `REPLIES_KIND` frames
        of up to MAX_BATCH_ITEMS, after the others, which leave one frame each, in order."""
        frames: list[tuple[bytes, bytes, int]] = []  # (identity, frame, replies it carries)
        batches: dict[bytes, list[list[Any]]] = {}
        for route, kind, body in replies:
            if route.batched:
                item = [route.request_id, kind, body]
                if (items := batches.get(route.identity)) is None:
                    batches[route.identity] = [item]
                else:
                    items.append(item)
            else:
                self._encode_reply(frames, route.identity, kind, body, route.request_id)
        for identity, items in batches.items():
            for start in range(0, len(items), MAX_BATCH_ITEMS):
                self._encode_replies(frames, identity, items[start : start + MAX_BATCH_ITEMS])
        if not frames:
            return
        undeliverable = 0
        on_io_thread = threading.get_ident() == self._io_thread_id
        with self._client_lock:
            if not self._client_open:  # not started yet, or stopped
                undeliverable, input_waiting = sum(count for _, _, count in frames), False
            else:
                router = self._client_router
                for identity, frame, count in frames:
                    try:
                        router.send_multipart((identity, frame), _NOBLOCK)
                    except zmq.ZMQError:  # client gone (EHOSTUNREACH) or not reading (EAGAIN)
                        undeliverable += count
                # A send may consume the ZMQ_FD signal of a request that arrived meanwhile:
                # the sleeping I/O thread must then be told to look (it drains before sleeping).
                input_waiting = on_io_thread or bool(router.get(_EVENTS) & _POLLIN)
        if undeliverable:
            self._count_drop("reply-undeliverable", undeliverable)
        if input_waiting:
            self._client_sent = True
            if self._reader is not None:
                if threading.get_ident() != self._reader_thread:  # it drains before it waits
                    self._reader_wake()
            elif not on_io_thread:
                self._wake()

    def _encode_replies(
        self, frames: list[tuple[bytes, bytes, int]], identity: bytes, items: list[list[Any]]
    ) -> None:
        if len(items) > 1:
            try:
                frames.append((identity, self.codec.encode_batch(REPLIES_KIND, items), len(items)))
                return
            except WireError:  # too large together, or one cannot be encoded: one frame each
                pass
        for request_id, kind, body in items:
            self._encode_reply(frames, identity, kind, body, request_id)

    def _encode_reply(
        self,
        frames: list[tuple[bytes, bytes, int]],
        identity: bytes,
        kind: str,
        body: Mapping[str, Any],
        request_id: int,
    ) -> None:
        try:
            frames.append((identity, self.codec.encode(kind, body, request_id), 1))
        except WireError as error:
            log.error("node %s: cannot encode reply %s: %s", self.node_id, kind, error)
            self._count_drop("reply-unencodable")

    def attach_reader(self, handler: Handler, wake: Callable[[], None]) -> tuple[int, int] | None:
        """Let the calling thread read the routers from now on, through `read()`; returns their
        ZMQ_FDs to wait on (None: the transport is not running). Messages for `handler` come
        back from `read()` instead of through it; `wake()` must make the reader call `read()`
        soon. While the reader is busy for longer than READER_STANDIN_MS the I/O thread reads in
        its place, delivering through `handler`, so that nothing waits on a long fsync or
        snapshot. The reader holds `drain_lock` around looking at its queue and `read()`."""
        if not self._routers_open:
            return None
        self._reader_wake = wake
        self._reader_thread = threading.get_ident()
        self._reader_busy_since = time.monotonic()
        self._reader = handler
        self._wake()  # the I/O thread stops polling the routers
        return self._router_fds

    def detach_reader(self) -> None:
        """The I/O thread reads the routers again."""
        self._reader = None
        self._wake()

    def read(self) -> list[Inbound] | None:
        """For the attached reader, holding `drain_lock`: drain both routers; the messages for
        its handler, in order (the others are delivered to their handlers). Empty: wait on the
        FDs (`reader_waits`), then call again. None: the transport stopped."""
        if not self._routers_open:
            return None
        handler = self._reader
        batches: dict[Handler, list[Inbound]] = {}
        # Reading counts as keeping up: the stand-in is for a reader that has not read lately.
        self._woken_at = self._reader_busy_since = time.monotonic()
        try:
            while True:  # until both are drained (the ZMQ_FDs re-armed), or there is work for it
                peer_more = self._drain_router(self._peer_router, batches, from_client=False)
                client_more = self._drain_router(self._client_router, batches, from_client=True)
                if not (peer_more or client_more) or handler in batches:
                    break
        finally:
            mine = batches.pop(handler, []) if handler is not None else []
            self._flush_batches(batches)
        return mine

    def reader_waits(self) -> None:
        """The reader is about to sleep on the FDs (after a `read()` that found nothing)."""
        self._reader_busy_since = None

    def reader_wakes(self) -> None:
        """The reader woke: from now on it is busy, until it reads or waits again (the stand-in
        steps in when it has done neither for READER_STANDIN_MS)."""
        self._reader_busy_since = time.monotonic()

    def _reader_stalled(self, now: float) -> bool:
        busy_since = self._reader_busy_since
        return busy_since is not None and now - busy_since > READER_STANDIN_MS / 1000

    def peer_stats(self) -> dict[str, PeerStats]:
        now = time.monotonic()
        silence = self._settings.peer_silence_ms / 1000
        with self._lock:
            result = {}
            for peer_id, peer in self._peers.items():
                with peer.lock:
                    stats = dataclasses.replace(peer.stats)
                if peer.last_heard is not None:
                    stats.last_heard_s = round(now - peer.last_heard, 3)
                    stats.hearing = now - peer.last_heard < silence
                result[peer_id] = stats
            return result

    def drop_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.dropped)

    def peer_drop_counts(self) -> dict[str, dict[str, int]]:
        """Inbound drops by known peer, then reason (only peers with drops)."""
        with self._lock:
            return {peer: dict(counts) for peer, counts in self._peer_drops.items() if counts}

    def count_body_drop(
        self,
        reason: str,
        peer: str | None,
        detail: str = "",
        source: tuple[bool, bytes] | None = None,
    ) -> None:
        """An actor refused the body of a frame this transport delivered (`reason` names the
        actor's decoder, e.g. "raft-body"); `peer` is the envelope's sender for a peer frame,
        None for a client's; `source` is the inbound's (`Inbound.source`), whose connection is
        cut for it. Counted and logged like the transport's own drops."""
        self._count_drop(reason, peer=peer, detail=detail, source=source)

    # ----- the I/O thread ---------------------------------------------------------------------

    def _wake(self) -> None:
        # Coalesce wake-ups: the I/O thread clears the flag before draining the queue.
        if not self._wake_pending:
            self._wake_pending = True
            with self._wake_fd_lock:  # never a write to a closed (maybe reused) descriptor
                if self._wake_fd >= 0:
                    os.eventfd_write(self._wake_fd, 1)

    def _run(self) -> None:
        self._io_thread_id = threading.get_ident()
        try:
            self._open_sockets()
        except BaseException as error:  # bind failures are reported to start()'s caller
            self._startup_error = error
            self._close_sockets()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        except Exception:
            log.exception("node %s: I/O thread failed", self.node_id)
            raise
        finally:
            self._close_sockets()

    def _open_sockets(self) -> None:
        s = self._settings
        self._peer_router = self._context.socket(zmq.ROUTER)
        self._client_router = self._context.socket(zmq.ROUTER)
        for router in (self._peer_router, self._client_router):
            configure_router(router, s)
        self._peer_router.bind(self._node.address)
        self._client_router.bind(self._node.client_address)
        self._router_monitors = [
            _monitor(router, _HANDSHAKE_FAILED | zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
            for router in (self._peer_router, self._client_router)
        ]
        for peer in self._config.peers_of(self.node_id):
            self._connect_peer(peer.id, peer.address)
        self._connect_new_peers()
        with self._client_lock:
            self._client_open = True
        self._router_fds = (self._peer_router.get(zmq.FD), self._client_router.get(zmq.FD))
        self._routers_open = True
        self._sockets_open = True

    def _connect_peer(self, peer_id: str, address: str) -> None:
        """Open the outbound link to one peer (on the I/O thread). `_peers` is replaced, never
        changed in place, so that other threads may look it up and iterate it without a lock."""
        s = self._settings
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.ROUTING_ID, link_routing_id(self.node_id))
        dealer.setsockopt(zmq.SNDHWM, s.send_hwm)
        dealer.setsockopt(zmq.IMMEDIATE, 1)  # never queue for a peer that is not connected
        dealer.setsockopt(zmq.RECONNECT_IVL, s.reconnect_ivl_ms)
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, s.reconnect_ivl_max_ms)
        dealer.setsockopt(zmq.CONNECT_TIMEOUT, s.connect_timeout_ms)
        dealer.setsockopt(zmq.HEARTBEAT_IVL, s.keep_alive_ms)
        dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, s.keep_alive_ms * 3)
        # The peer's router closes the connection when our heartbeats stop for this long.
        dealer.setsockopt(zmq.HEARTBEAT_TTL, min(s.keep_alive_ms * 3, MAX_HEARTBEAT_TTL_MS))
        dealer.setsockopt(zmq.TCP_KEEPALIVE, 1)
        monitor = _monitor(dealer, zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        dealer.connect(connect_endpoint(self._node.address, address))
        peer = _Peer(PeerStats(peer_id, address), dealer, monitor)
        name = peer_id.encode()
        with self._lock:
            self._peers = {**self._peers, peer_id: peer}
            self._peer_drops.setdefault(peer_id, Counter())
            self._identity_peers[name] = peer_id
            # A node that talked before it was added was cut as an unknown sender: hear it now.
            refused = self._refused[0]
            for identity in [known for known in list(refused) if known.partition(b"\0")[0] == name]:
                del refused[identity]
        if self._monitors is not None:  # the loop runs: it watches the new link's monitor too
            self._monitors.register(monitor, zmq.POLLIN)
            self._monitor_handlers[monitor] = functools.partial(self._on_monitor_event, peer)

    def add_peer(self, peer_id: str, address: str) -> bool:
        """Reach a node that the topology does not list (a member added at run time: its
        address comes with the membership). From any thread; False when it is known already."""
        with self._lock:
            if peer_id == self.node_id or peer_id in self._peers or peer_id in self._adding:
                return False
            self._adding[peer_id] = address
        log.info("node %s: new peer %s at %s", self.node_id, peer_id, address)
        self._wake()
        return True

    def _connect_new_peers(self) -> None:
        if not self._adding:  # the usual case, without the lock
            return
        with self._lock:
            adding, self._adding = self._adding, {}
        for peer_id, address in adding.items():
            self._connect_peer(peer_id, address)

    def _close_sockets(self) -> None:
        # Stop every monitor before closing its reading end: ZeroMQ sends monitor events with a
        # blocking send under the monitored socket's lock, so an event sent to a closed reader
        # would wedge ZeroMQ's I/O thread, and then disable_monitor() here.
        for peer in self._peers.values():
            with peer.lock:  # after this, senders on other threads see `closed` and drop
                peer.closed = True
        with self._client_lock:
            self._client_open = False
        routers = [getattr(self, name, None) for name in ("_peer_router", "_client_router")]
        sockets = [sock for sock in routers if sock is not None]
        sockets += [peer.socket for peer in self._peers.values()]
        with self._peer_router_lock, self._client_lock:  # an attached reader may be reading
            self._routers_open = False
            for sock in sockets:
                sock.disable_monitor()
            for monitor in getattr(self, "_router_monitors", []):
                monitor.close(0)
            for peer in self._peers.values():
                peer.monitor.close(0)
            for sock in sockets:
                sock.close(0)

    def _loop(self) -> None:
        """Sleep in poll(2) on the routers' ZMQ_FDs and the wake-up eventfd, then do the work.

        A ZMQ_FD only says that the socket's state may have changed, and a send or receive on the
        socket can consume that signal: so a router is drained (until a receive fails) before
        sleeping whenever its FD fired, it was sent on, or its last drain stopped at the batch
        bound. This costs fewer system calls per message than zmq_poll, which asks every socket
        for its ZMQ_EVENTS twice per sleep.
        """
        peer_fd = self._peer_router.get(zmq.FD)
        client_fd = self._client_router.get(zmq.FD)
        traffic = select.poll()
        for fd in (peer_fd, client_fd, self._wake_fd):
            traffic.register(fd, select.POLLIN)
        monitors = zmq.Poller()  # looked at on the housekeeping tick only
        on_monitor_event: dict[zmq.Socket, Callable[[], None]] = {}
        for peer in self._peers.values():
            on_monitor_event[peer.monitor] = functools.partial(self._on_monitor_event, peer)
        for monitor in self._router_monitors:
            on_monitor_event[monitor] = functools.partial(self._on_router_event, monitor)
        for monitor in on_monitor_event:
            monitors.register(monitor, zmq.POLLIN)
        self._monitors, self._monitor_handlers = monitors, on_monitor_event
        housekeeping_every = min(HOUSEKEEPING_MS, self._settings.peer_heartbeat_ms) / 1000
        heartbeat_every = self._settings.peer_heartbeat_ms / 1000
        now = time.monotonic()
        next_housekeeping = next_heartbeat = next_backlog_check = now
        peer_more = client_more = True  # look at both routers before the first sleep
        peer_fired = client_fired = False
        reading = True  # whether this thread reads the routers (no reader attached)
        while not self._stopping.is_set():
            if reading != (self._reader is None):  # a reader came or went
                reading = self._reader is None
                for fd in (peer_fd, client_fd):
                    if reading:
                        traffic.register(fd, select.POLLIN)
                    else:
                        traffic.unregister(fd)
                peer_more = client_more = reading
                if not reading:  # this thread's last drain may have taken the FDs' signal
                    self._reader_wake()
            if reading:
                with self.drain_lock:
                    if peer_fired or peer_more:
                        peer_more = self._drain_and_deliver(self._peer_router, from_client=False)
                    if client_fired or client_more or self._client_sent:
                        client_more = self._drain_and_deliver(self._client_router, from_client=True)
            elif self._reader_stalled(now) and self.drain_lock.acquire(blocking=False):
                try:  # stand in, so that gossip and clients get answers
                    self._drain_and_deliver(self._peer_router, from_client=False)
                    self._drain_and_deliver(self._client_router, from_client=True)
                finally:
                    self.drain_lock.release()
                self._reader_wake()  # the drain took the FDs' signal: the reader looks again
            if reading and (peer_more or client_more or self._client_sent):
                timeout_ms = 0.0
            else:
                timeout_ms = max(0.0, (next_housekeeping - now) * 1000)
            ready = traffic.poll(timeout_ms)
            now = self._woken_at = time.monotonic()
            peer_fired = client_fired = False
            for fd, _ in ready:
                if fd == peer_fd:
                    peer_fired = True
                elif fd == client_fd:
                    client_fired = True
                else:
                    self._connect_new_peers()
                    self._drain_outbox()
            if now >= next_housekeeping:
                reads = self._take_reads()  # before the monitors: see _check_backlogs
                for monitor, _ in monitors.poll(0):
                    on_monitor_event[monitor]()
                scan = now >= next_backlog_check
                self._check_backlogs(reads, now, scan)
                if scan:
                    next_backlog_check = now + BACKLOG_CHECK_MS / 1000
                if now >= next_heartbeat:
                    self._send_heartbeats()
                    next_heartbeat = now + heartbeat_every
                next_housekeeping = now + housekeeping_every

    def _send_heartbeats(self) -> None:
        """Any frame tells a peer we are alive: only a link that carried nothing gets one."""
        for peer_id, peer in self._peers.items():
            if peer.stats.msgs_out == peer.msgs_out_at_heartbeat:
                self._send_to_peer(peer_id, HEARTBEAT_KIND, {})
            peer.msgs_out_at_heartbeat = peer.stats.msgs_out

    def _drain_outbox(self) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass
        self._wake_pending = False
        outbox = self._outbox
        while outbox:
            self._send_to_peer(*outbox.popleft())

    def _send_to_peer(self, peer_id: str, kind: str, body: Mapping[str, Any]) -> bool:
        peer = self._peers.get(peer_id)
        if peer is None:
            log.warning("node %s: no peer %r; message %s dropped", self.node_id, peer_id, kind)
            return False
        try:
            frame = self.codec.encode(kind, body)
        except WireError as error:
            log.error("node %s: cannot send %s to %s: %s", self.node_id, kind, peer_id, error)
            with peer.lock:
                peer.stats.drops_out += 1
            return False
        with peer.lock:
            stats = peer.stats  # per-message counters: see PeerStats
            if peer.closed:
                stats.drops_out += 1
                return False
            try:
                peer.socket.send(frame, _NOBLOCK)
            except zmq.Again:  # not connected (IMMEDIATE) or at its HWM: drop, never block
                stats.drops_out += 1
                return False
            stats.msgs_out += 1
            stats.bytes_out += len(frame)
        return True

    def _drain_router(
        self, router: zmq.Socket, batches: dict[Handler, list[Inbound]], *, from_client: bool
    ) -> bool:
        """Take what is queued, up to a batch; True when the bound stopped it, as more may wait.

        Receiving until EAGAIN is what re-arms the edge-triggered ZMQ_FD; a failed receive also
        processes the socket's pending commands, as a ZMQ_EVENTS check would. Asking ZMQ_EVENTS
        before every receive instead costs a system call per message.
        """
        lock = self._client_lock if from_client else self._peer_router_lock
        index = int(from_client)
        refused = self._refused[index]
        cut = 0  # frames of cut connections, dropped unread: counted once a drain
        try:
            for _ in range(DRAIN_BATCH):
                with lock:
                    if not self._routers_open:  # closed by stop(): an attached reader finds nothing
                        return False
                    if from_client:
                        self._client_sent = False  # the failed receive covers earlier sends
                    try:
                        identity = router.recv(_NOBLOCK)  # a ROUTER's first frame: the sender
                    except zmq.Again:
                        return False
                    frame = router.recv(_NOBLOCK, copy=False)  # a Frame tells `more` cheaply
                    extra_frames = frame.more
                    if identity in refused:
                        while frame.more:
                            frame = router.recv(_NOBLOCK, copy=False)
                        cut += 1
                        if not refused[identity]:  # shut it down from here: its fd is at hand
                            refused[identity] = self._cut_source(index, frame)
                        continue
                    size = len(frame)
                    wire = size + (2 if size < 256 else 9)  # the bytes it took on the wire (ZMTP)
                    while frame.more:
                        frame = router.recv(_NOBLOCK, copy=False)
                        size = len(frame)
                        wire += size + (2 if size < 256 else 9)
                    reads = self._reads[index]  # for the backlog check
                    if (taken := reads.get(identity)) is None:
                        reads[identity] = [_source_fd(frame), wire]
                    else:
                        taken[1] += wire
                if extra_frames:
                    self._count_drop("frame-count", source=(from_client, identity))
                else:
                    self._on_frame(identity, frame.bytes, from_client, batches)
                if identity in refused:  # this frame was hostile: cut its connection now
                    refused[identity] = self._cut_source(index, frame)
            return True
        finally:
            if cut:
                self._count_drop("cut-connection", cut)

    def _refuse(self, from_client: bool, identity: bytes) -> None:
        """Cut the connection of `identity` (on the reader's next frame from it) and drop what it
        sends from now on. Under `_lock`: actors' threads refuse too (`count_body_drop`)."""
        refused = self._refused[int(from_client)]
        if identity not in refused:
            if len(refused) >= MAX_REFUSED_CONNECTIONS:
                del refused[next(iter(refused))]
            refused[identity] = False

    def _cut_source(self, index: int, frame: zmq.Frame) -> bool:
        """Shut down the connection `frame` came in on; True when that was done."""
        fd = _source_fd(frame)
        if fd < 0:  # libzmq does not say (a ZMTP 1.0 peer): the connection cannot be cut
            return True  # (and its frames are still dropped unread)
        connection = self._connections[index].get(fd)
        if connection is None:  # its monitor's news is not in yet: the frame just came from it
            peer = _peer_name(fd)
            return peer is not None and _cut(fd, peer)
        if not connection.cut:
            connection.cut = _cut(fd, connection.peer)
        return connection.cut

    def _drain_and_deliver(self, router: zmq.Socket, *, from_client: bool) -> bool:
        batches: dict[Handler, list[Inbound]] = {}
        try:
            return self._drain_router(router, batches, from_client=from_client)
        finally:
            self._flush_batches(batches)

    def _flush_batches(self, batches: dict[Handler, list[Inbound]]) -> None:
        for handler, messages in batches.items():
            self._deliver(handler, InboundBatch(messages), messages[0].envelope.kind)

    def _on_frame(
        self,
        identity: bytes,
        frame: bytes,
        from_client: bool,
        batches: dict[Handler, list[Inbound]],
    ) -> None:
        if len(frame) > self._settings.max_message_bytes:
            peer_id = self._connection_peer(identity, from_client)
            self._count_drop(
                "oversized",
                peer=peer_id,
                detail=f"{len(frame)} bytes",
                source=(from_client, identity),
            )
            return
        try:
            envelope = decode_envelope(frame, self._settings.max_message_bytes)
        except WireError as error:  # its text is bounded: no value of the frame in it
            peer_id = self._connection_peer(identity, from_client)
            self._count_drop(
                "malformed", peer=peer_id, detail=str(error), source=(from_client, identity)
            )
            return
        if envelope.cluster != self.codec.cluster:
            peer_id = self._connection_peer(identity, from_client)
            self._count_drop(
                "foreign-cluster",
                peer=peer_id,
                detail=f"{envelope.cluster!r}",
                source=(from_client, identity),
            )
            return
        if from_client:
            if envelope.kind == BATCH_KIND:
                self._dispatch_batch(identity, envelope, batches)
            else:
                inbound = Inbound(envelope, ClientRoute(identity, envelope.request_id))
                self._dispatch(inbound, batches)
            return
        peer = self._peers.get(envelope.sender)
        if peer is None:
            peer_id = self._connection_peer(identity, from_client)
            self._count_drop(
                "unknown-sender",
                peer=peer_id,
                detail=f"{envelope.sender!r}",
                source=(from_client, identity),
            )
            return
        stats = peer.stats  # per-message counters: see PeerStats
        peer.last_heard = self._woken_at
        stats.msgs_in += 1
        stats.bytes_in += len(frame)
        if envelope.kind != HEARTBEAT_KIND:
            self._dispatch(Inbound(envelope, None, identity), batches)

    def _dispatch_batch(
        self, identity: bytes, batch: Envelope, batches: dict[Handler, list[Inbound]]
    ) -> None:
        """Each well-formed request of a client's batch frame, as if it had come alone."""
        requests, dropped = unpack_batch(batch)
        for reason, count in dropped.items():
            self._count_drop(reason, count, source=(True, identity))  # a client's: by reason
        for request in requests:
            route = ClientRoute(identity, request.request_id, batched=True)
            self._dispatch(Inbound(request, route), batches)

    def _dispatch(self, inbound: Inbound, batches: dict[Handler, list[Inbound]]) -> None:
        kind = inbound.envelope.kind
        route = inbound.route
        handlers = self._handlers if route is None else self._client_handlers
        handler = handlers.get(kind.partition(".")[0])
        if handler is None:
            if route is None:  # a known peer's: maybe of a newer version
                self._count_drop("unknown-kind", peer=inbound.envelope.sender, detail=f"{kind!r}")
            else:  # no client of this version sends it
                self._count_drop("unknown-kind", detail=f"{kind!r}", source=inbound.source)
        elif handler in self._batched:
            batches.setdefault(handler, []).append(inbound)
        else:
            self._deliver(handler, inbound, kind)

    def _deliver(self, handler: Handler, message: Inbound | InboundBatch, kind: str) -> None:
        try:
            handler(message)
        except pykka.ActorDeadError:  # the node is stopping: its actors go first
            self._count_drop("receiver-stopped")
        except Exception:  # a handler bug must not kill the I/O thread
            log.exception("node %s: handler for %s failed", self.node_id, kind)
            self._count_drop("handler-error")

    def _count_drop(
        self,
        reason: str,
        count: int = 1,
        *,
        peer: str | None = None,
        detail: str = "",
        source: tuple[bool, bytes] | None = None,
    ) -> None:
        """Count a drop by reason, and by `peer` when that is a known peer; an inbound one also
        goes to the rate-limited drop log. `detail` must be bounded (no value of a frame). A
        frame from `source` (client port?, routing id) that no correct sender sends gets its
        connection cut (`_HOSTILE_DROPS`; an unknown kind only from a client)."""
        with self._lock:
            if source is not None and (reason in _HOSTILE_DROPS or reason == "unknown-kind"):
                self._refuse(*source)
            self.dropped[reason] += count
            per_peer = self._peer_drops.get(peer) if peer is not None else None
            if per_peer is not None:
                per_peer[reason] += count
        if reason not in _UNLOGGED_DROPS:
            self._drop_log.note(peer if per_peer is not None else None, reason, detail, count)

    def _connection_peer(self, identity: bytes, from_client: bool) -> str | None:
        """The known peer a peer-port connection names itself (its routing id, which peers begin
        with their node id: `link_routing_id`), for a frame dropped before its sender could be
        looked at."""
        return None if from_client else self._identity_peers.get(identity.partition(b"\0")[0])

    def _on_router_event(self, monitor: zmq.Socket) -> None:
        """Count connections that failed the ZeroMQ handshake (raw TCP garbage) or were closed;
        note the accepted ones for the backlog check."""
        connections = self._connections[self._router_monitors.index(monitor)]
        while True:
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            message = parse_monitor_message(frames)
            event, fd = message["event"], message["value"]  # the connection's descriptor
            if event == zmq.EVENT_ACCEPTED:
                if (peer := _peer_name(fd)) is not None:
                    connections[fd] = _Connection(peer, time.monotonic())
            elif event & _HANDSHAKE_FAILED:
                self._count_drop("handshake-failed")
            else:
                connections.pop(fd, None)
                with self._lock:
                    self.closed_connections += 1

    def _take_reads(self) -> list[dict[bytes, list[int]]]:
        """What readers took from each router since the last call."""
        taken = []
        for index, lock in enumerate((self._peer_router_lock, self._client_lock)):
            with lock:
                taken.append(self._reads[index])
                self._reads[index] = {}
        return taken

    def _check_backlogs(self, reads: list[dict[bytes, list[int]]], now: float, scan: bool) -> None:
        """Credit `reads` (taken before the monitors' news was read, so that every connection
        read from is known) to their connections; with `scan`, cut every connection that holds
        more than `_unread_limit` unread bytes.

        The routers queue without limit, as a full queue is a step towards libzmq's abort (see
        `configure_router`). Unread bytes are what the kernel took from the connection (TCP_INFO)
        less what readers took from the router for it. A cut (shutdown(2)) makes libzmq close
        the connection the ordinary way, as if its peer had; what it queued is still read (and
        dropped, as a rule)."""
        for index, taken in enumerate(reads):
            connections = self._connections[index]
            for fd, wire in taken.values():
                if (connection := connections.get(fd)) is not None:
                    connection.read += wire
            if not scan:
                continue
            for fd, connection in connections.items():
                if connection.cut:
                    continue
                received = _tcp_bytes_received(fd, connection.peer)
                if received is None:
                    continue
                allowed = (
                    self._unread_limit
                    + _UNREAD_SLACK
                    + _UNREAD_SLACK_PER_S * (now - connection.since)
                )
                if received - connection.read > allowed and _cut(fd, connection.peer):
                    connection.cut = True
                    self._count_drop("inbound-backlog")

    def _on_monitor_event(self, peer: _Peer) -> None:
        while True:
            try:
                frames = peer.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = parse_monitor_message(frames)["event"]
            with peer.lock:
                if event == zmq.EVENT_CONNECTED:
                    peer.stats.connected = True
                elif event == zmq.EVENT_DISCONNECTED:
                    peer.stats.connected = False


def _source_fd(frame: zmq.Frame) -> int:
    """The descriptor of the connection a frame came in on (-1: unknown)."""
    try:
        return frame.get(_SRCFD)
    except zmq.ZMQError:  # no metadata: an unversioned (ZMTP 1.0) peer's
        return -1


def _on_connection(fd: int, peer: Any, use: Callable[[socket.socket], Any], failed: Any) -> Any:
    """`use(sock)` on the connection libzmq owns at `fd`, if it is still `peer`'s (None: any
    connected socket's); `failed` when it is not, or when a call fails. Never closes it."""
    try:
        sock = socket.socket(fileno=fd)
    except (OSError, ValueError):  # ValueError: a negative descriptor (-1: unknown)
        return failed
    try:
        if peer is not None and sock.getpeername() != peer:
            return failed
        return use(sock)
    except OSError:
        return failed
    finally:
        sock.detach()  # libzmq closes it, never we


def _peer_name(fd: int) -> Any:
    """The remote address of a socket libzmq owns, or None (closed, or no connected socket)."""
    return _on_connection(fd, None, socket.socket.getpeername, None)


def _bytes_received(sock: socket.socket) -> int | None:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 136)
    return _TCPI_BYTES_RECEIVED.unpack_from(info, 128)[0] if len(info) >= 136 else None


def _tcp_bytes_received(fd: int, peer: Any) -> int | None:
    """The bytes the kernel received on a connection libzmq owns (None: it is not `peer`'s)."""
    return _on_connection(fd, peer, _bytes_received, None)


def _reset(sock: socket.socket) -> bool:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    sock.shutdown(socket.SHUT_RDWR)
    return True


def _cut(fd: int, peer: Any) -> bool:
    """Shut down a connection libzmq owns, if it is still `peer`'s: libzmq reads its end and
    closes it, with a reset (SO_LINGER 0), which frees the kernel's socket at once and tells
    the sender (a socket only shut down would sit in FIN-WAIT-2 with a closed window, its
    sender blocked, for `tcp_fin_timeout`)."""
    return _on_connection(fd, peer, _reset, False)


def transport_status(transport: Transport, board: StatusBoard) -> dict[str, Any]:
    """The transport's part of the node's status: per-peer link figures and dropped frames
    (the transport's own drops and the bodies its actors refused; by reason, and under each
    peer the inbound drops attributed to it)."""
    peer_drops = transport.peer_drop_counts()
    return {
        "peers": {
            peer_id: {
                "hearing": stats.hearing,
                "connected": stats.connected,
                "last_heard_s": stats.last_heard_s,
                "msgs_in": stats.msgs_in,
                "msgs_out": stats.msgs_out,
                "bytes_in": stats.bytes_in,
                "bytes_out": stats.bytes_out,
                "drops_out": stats.drops_out,
                "dropped_in": peer_drops.get(peer_id, {}),
            }
            for peer_id, stats in transport.peer_stats().items()
        },
        "dropped": {**transport.drop_counts(), **board.body_drops},
        "closed_connections": transport.closed_connections,
    }
