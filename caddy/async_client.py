"""The asyncio client of a CADDY cluster: many concurrent requests over one socket per node.

The operations, errors and retry policy of `caddy.client.Client`, as coroutines. Every write
still carries the client's session id and a sequence number of its own, so writes in flight
together, and their retries after a failover, are each applied at most once. Requests issued to
a node during one turn of the event loop travel in one frame, and their answers come back
together (`caddy.wire.BATCH_KIND`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from caddy.client import check_key, client_codec, socket_options, topology_of
from caddy.config import ClusterConfig
from caddy.errors import Unavailable, WireError
from caddy.replication.replies import OK_KIND, VALUE_FIELD
from caddy.replication.sessions import MAX_RESULTS_PER_SESSION
from caddy.request_policy import (
    ATTEMPT_TIMEOUT_S,
    RequestPolicy,
    SessionExpired,
    answer_body,
    check_size,
    decisive,
    leader_of,
)
from caddy.wire import BATCH_KIND, MAX_BATCH_ITEMS, REPLIES_KIND, Envelope, unpack_batch

__all__ = ["AsyncClient"]

log = logging.getLogger(__name__)

EXPIRY_SLOT_S = 0.005  # see _Expiries

Answers = dict[str, Envelope | None]


@dataclass(slots=True)
class _Attempt:
    """One attempt of a request, sent to one or more nodes: their answers so far, and the future
    its caller waits on until `until` holds or every node it reached answered."""

    future: asyncio.Future[None]
    answers: Answers
    until: Callable[[Answers], bool]
    outstanding: int  # nodes that may still answer

    def take(self, node_id: str, answer: Envelope | None) -> None:
        """`node_id`'s answer; None when the request could not be sent to it."""
        self.outstanding -= 1
        if answer is not None:
            self.answers[node_id] = answer
        if not self.outstanding or (answer is not None and self.until(self.answers)):
            self.settle()

    def settle(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def fail(self, error: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass(slots=True)
class _Session:
    """The sequence numbers of one client session: the seqs of writes in flight and the lowest of
    them (`oldest`; the next seq when none is in flight)."""

    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    seq: int = 0
    unanswered: set[int] = field(default_factory=set)
    oldest: int = 1

    def has_room(self, max_in_flight: int) -> bool:
        return self.seq + 1 - self.oldest < max_in_flight

    def take(self) -> int:
        self.seq += 1
        self.unanswered.add(self.seq)
        return self.seq

    def answered(self, seq: int) -> None:
        self.unanswered.discard(seq)
        if seq == self.oldest:
            oldest = seq + 1
            while oldest <= self.seq and oldest not in self.unanswered:
                oldest += 1
            self.oldest = oldest


@dataclass(slots=True)
class _Expiries:
    """Settles attempts whose time ran out, on one timer rather than one each (a timer per
    request is a heap entry, a handle and a cancel). Attempts are kept in slots of
    EXPIRY_SLOT_S: each ends up to half a slot early or a slot late."""

    due: dict[int, list[_Attempt]] = field(default_factory=dict)  # by slot: ceil(time / SLOT)
    slots: list[int] = field(default_factory=list)  # a heap of the keys of `due`
    timer: asyncio.TimerHandle | None = None
    timer_slot: int = 0

    def add(self, when: float, attempt: _Attempt) -> None:
        """Settle `attempt` at about `when` (on the running loop's clock) if it still waits; an
        infinite `when` (a client made with timeout=math.inf) never comes."""
        if math.isinf(when):
            return
        slot = math.ceil(when / EXPIRY_SLOT_S)
        if (due := self.due.get(slot)) is not None:
            due.append(attempt)
            return
        self.due[slot] = [attempt]
        heapq.heappush(self.slots, slot)
        if self.timer is None or slot < self.timer_slot:
            self._arm(slot)

    def clear(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.due.clear()
        self.slots.clear()

    def _arm(self, slot: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_slot = slot
        self.timer = asyncio.get_running_loop().call_at(slot * EXPIRY_SLOT_S, self._run)

    def _run(self) -> None:
        self.timer = None
        slots = self.slots
        current = asyncio.get_running_loop().time() / EXPIRY_SLOT_S + 0.5
        while slots and slots[0] <= current:
            for attempt in self.due.pop(heapq.heappop(slots)):
                attempt.settle()  # answered ones are settled already
        if slots:
            self._arm(slots[0])


class AsyncClient:
    """Talks to the client endpoints of a cluster's nodes from one asyncio event loop.

    Writes run at most `max_in_flight` sequence numbers ahead of the oldest unanswered one (more
    wait their turn): the cluster keeps the answers of that many writes per session, which is
    what makes retries exactly-once.
    """

    def __init__(
        self,
        topology: str | os.PathLike[str] | ClusterConfig,
        timeout: float = 5.0,
        max_in_flight: int = MAX_RESULTS_PER_SESSION,
    ) -> None:
        if not 1 <= max_in_flight <= MAX_RESULTS_PER_SESSION:
            raise ValueError(f"max_in_flight must be 1..{MAX_RESULTS_PER_SESSION}")
        self.config = topology_of(topology)
        self.timeout = timeout
        self._session = _Session()
        self._codec = client_codec(self.config)
        self._context = zmq.Context.instance()
        self._sockets: dict[str, zmq.Socket] = {}
        self._readable: dict[str, asyncio.Event] = {}  # set: the node's socket may have input
        self._sent_unchecked: set[str] = set()  # nodes sent to since their last input check
        self._readers: list[asyncio.Task[None]] = []
        # By request id: the attempt waiting for its answer, and the node it was sent to. Every
        # attempt not yet settled has a request here.
        self._waiting: dict[int, tuple[_Attempt, str]] = {}
        self._outgoing: dict[str, list[list[Any]]] = {}  # [request id, kind, body] by node
        self._expiries = _Expiries()
        self._request_ids = itertools.count(1)
        self._node_ids = [node.id for node in self.config.nodes if node.role != "witness"]
        self._leader: str | None = None
        self._max_in_flight = max_in_flight
        self._window_waiters: list[asyncio.Future[None]] = []
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop: requests still running end with Unavailable, nothing is reopened."""
        self._closed = True
        for attempt, _ in list(self._waiting.values()):
            attempt.settle()
        self._expiries.clear()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._readers.clear()
        for sock in self._sockets.values():
            sock.close(0)
        self._sockets.clear()
        self._readable.clear()

    # ----- key-value operations (linearizable; writes applied exactly once) ---------------------

    async def put(self, key: str, value: Any) -> None:
        """Store `value` under `key`; returns once committed and applied."""
        await self._write("kv.put", {"key": check_key(key), "value": value})

    async def get(self, key: str) -> Any:
        """The value under `key`, or None when absent; linearizable (ReadIndex on the leader)."""
        body = {"key": check_key(key)}
        check_size("kv.get", body, self.config.transport.max_message_bytes)
        return await self._call("kv.get", body)

    async def delete(self, key: str) -> bool:
        """Remove `key`; True when it existed."""
        return bool(await self._write("kv.delete", {"key": check_key(key)}))

    async def cas(self, key: str, expected: Any, new: Any) -> bool:
        """Set `key` to `new` if it holds `expected` (None: absent); True when swapped."""
        body = {"key": check_key(key), "expected": expected, "new": new}
        return bool(await self._write("kv.cas", body))

    async def leader(self) -> str | None:
        """The id of the node that leads in the highest term any node reports, if any."""
        return leader_of(await self.statuses())

    async def status(self, node_id: str) -> dict[str, Any]:
        """The status document of one node; Unavailable when it does not answer in time."""
        self.config.node(node_id)  # a ConfigError naming an unknown node
        answer = (await self._ask_alone([node_id], "client.status"))[node_id]
        if answer is None:
            raise Unavailable(f"node {node_id} did not answer within {self.timeout:g} s")
        return answer_body(answer)

    async def statuses(self) -> dict[str, dict[str, Any] | None]:
        """Every node's status, asked in parallel; None for a node that did not answer."""
        answers = await self._ask_alone([node.id for node in self.config.nodes], "client.status")
        return {node: None if a is None else answer_body(a) for node, a in answers.items()}

    @property
    def client_id(self) -> str:
        """The id of the client's current session."""
        return self._session.client_id

    async def _write(self, kind: str, body: dict[str, Any]) -> Any:
        check_size(kind, body, self.config.transport.max_message_bytes)
        try:
            return await self._write_in_session(kind, body)
        except SessionExpired as expired:
            if expired.retried:
                raise
            # The cluster applied nothing: the same write goes on in a new session, which the
            # first of the old session's writes to hear of its end opens.
            if self._session.client_id == body["client"]:
                self._session = _Session()
            return await self._write_in_session(kind, body)

    async def _write_in_session(self, kind: str, body: dict[str, Any]) -> Any:
        # The cluster keeps answers from the lowest unanswered seq on, so a new seq may run at
        # most `max_in_flight` ahead of it: a window, not just a count of writes in flight.
        while not self._session.has_room(self._max_in_flight):
            waiter = asyncio.get_running_loop().create_future()
            self._window_waiters.append(waiter)
            await waiter
        session = self._session
        seq = session.take()  # a retry of this write reuses the number: applied once
        # `ack`: every write below the lowest unanswered one has had its answer
        body["client"], body["seq"], body["ack"] = session.client_id, seq, session.oldest
        try:
            return await self._call(kind, body)
        finally:  # no await in here: a cancellation cannot skip waking the waiters
            session.answered(seq)
            if self._window_waiters:
                waiters, self._window_waiters = self._window_waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _call(self, kind: str, body: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        started = loop.time()
        leader, first = self._leader, None
        if leader is not None and self.timeout > 0:  # RequestPolicy's first attempt, lean
            answers = await self._ask(
                [leader], kind, body, started + min(self.timeout, ATTEMPT_TIMEOUT_S)
            )
            if (answer := answers[leader]) is not None and answer.kind == OK_KIND:
                self._leader = leader
                return answer.body.get(VALUE_FIELD)
            first = answers
        return await self._call_through_policy(kind, body, leader, started, first)

    async def _call_through_policy(
        self,
        kind: str,
        body: dict[str, Any],
        leader: str | None,
        started: float,
        first: Answers | None,
    ) -> Any:
        """Retry across redirects and failovers (see `RequestPolicy`); `first`: the answers to
        its first attempt, if that was made already."""
        loop = asyncio.get_running_loop()
        now = started
        policy = RequestPolicy(self._node_ids, leader, started + self.timeout, self.timeout)
        while (attempt := policy.attempt(now)) is not None:
            asked, wait = attempt
            if first is not None:
                answers, first = first, None
            else:
                answers = await self._ask(asked, kind, body, now + wait)
            if policy.settle(asked, answers):
                self._leader = policy.served_by
                return policy.value
            if not any(answers.values()) and not self._closed:  # maybe nothing left: no spin
                await asyncio.sleep(max(0.0, now + wait - loop.time()))
            if policy.backoff:
                await asyncio.sleep(min(policy.backoff, max(0.0, policy.deadline - loop.time())))
            now = loop.time()
        self._leader = None
        raise policy.failure()

    # ----- requests ----------------------------------------------------------------------------

    async def _ask(
        self,
        node_ids: list[str],
        kind: str,
        body: dict[str, Any],
        expiry: float,
        until: Callable[[Answers], bool] = decisive,
        alone: bool = False,
    ) -> Answers:
        """Send one request to each node; their answers, until `until` holds, every node asked
        answered, or the loop's clock reaches `expiry`. The request waits for the end of this
        turn of the loop, to leave with the others to the same node, unless it goes `alone`."""
        if self._closed:
            raise Unavailable("the client is closed")
        # Every node counts from the start: a send that fails at once settles only its own part.
        attempt = _Attempt(
            asyncio.get_running_loop().create_future(),
            dict.fromkeys(node_ids),
            until,
            len(node_ids),
        )
        request_ids = []
        try:
            for node_id in node_ids:
                request_id = next(self._request_ids)
                self._socket(node_id)  # its reader must run before the answer can come
                self._waiting[request_id] = (attempt, node_id)
                request_ids.append(request_id)
                item = [request_id, kind, body]
                if alone:
                    self._send(node_id, self._codec.encode(kind, body, request_id), [item])
                else:
                    self._enqueue(node_id, item)
            self._expiries.add(expiry, attempt)
            await attempt.future
        finally:
            for request_id in request_ids:  # a late answer finds nobody waiting: dropped
                self._waiting.pop(request_id, None)
        return attempt.answers

    async def _ask_alone(self, node_ids: list[str], kind: str) -> Answers:
        """Ask every node and wait for all (status queries), in frames of their own."""
        expiry = asyncio.get_running_loop().time() + self.timeout
        return await self._ask(node_ids, kind, {}, expiry, _everyone, alone=True)

    def _enqueue(self, node_id: str, item: list[Any]) -> None:
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        if (queued := self._outgoing.get(node_id)) is None:
            self._outgoing[node_id] = [item]
        else:
            queued.append(item)

    def _flush(self) -> None:
        """Send what this turn of the loop asked of each node: one request as a plain frame,
        more in BATCH_KIND frames of up to MAX_BATCH_ITEMS."""
        outgoing, self._outgoing = self._outgoing, {}
        if self._closed:  # close() settled their attempts
            return
        for node_id, items in outgoing.items():
            for start in range(0, len(items), MAX_BATCH_ITEMS):
                self._send_items(node_id, items[start : start + MAX_BATCH_ITEMS])

    def _send_items(self, node_id: str, items: list[list[Any]]) -> None:
        if len(items) > 1:
            try:
                frame = self._codec.encode_batch(BATCH_KIND, items)
            except WireError:  # too large together, or one cannot be encoded: one frame each
                for item in items:
                    self._send_items(node_id, [item])
                return
        else:
            request_id, kind, body = items[0]
            try:
                frame = self._codec.encode(kind, body, request_id)
            except WireError as error:  # the caller's to hear
                if (waiting := self._waiting.pop(request_id, None)) is not None:
                    waiting[0].fail(error)
                return
        self._send(node_id, frame, items)

    def _send(self, node_id: str, frame: bytes, items: list[list[Any]]) -> None:
        """Send a frame of `items`; their attempts hear at once when it could not be sent."""
        try:
            self._sockets[node_id].send(frame, zmq.NOBLOCK)
        except zmq.Again:
            for request_id, _, _ in items:
                if (waiting := self._waiting.pop(request_id, None)) is not None:
                    waiting[0].take(node_id, None)
            return
        if node_id not in self._sent_unchecked:  # a send may take the ZMQ_FD edge: look once
            self._sent_unchecked.add(node_id)  # the sends of this turn of the loop are done
            asyncio.get_running_loop().call_soon(self._look_for_input, node_id)

    def _look_for_input(self, node_id: str) -> None:
        self._sent_unchecked.discard(node_id)
        sock = self._sockets.get(node_id)
        if sock is not None and sock.get(zmq.EVENTS) & zmq.POLLIN:
            self._readable[node_id].set()

    def _socket(self, node_id: str) -> zmq.Socket:
        """The node's DEALER. It is a plain socket, read by a task woken through its ZMQ_FD:
        answers come in bursts, and draining each burst without a Future per message is what
        keeps one event loop ahead of many requests."""
        sock = self._sockets.get(node_id)
        if sock is None:
            if self._closed:
                raise Unavailable("the client is closed")
            sock = self._sockets[node_id] = self._context.socket(zmq.DEALER)
            socket_options(sock)
            sock.connect(self.config.node(node_id).client_address)
            readable = self._readable[node_id] = asyncio.Event()
            self._readers.append(asyncio.create_task(self._read(sock, readable)))
        return sock

    async def _read(self, sock: zmq.Socket, readable: asyncio.Event) -> None:
        """Hand each answer to the request waiting for it; garbage and late answers are dropped."""
        loop = asyncio.get_running_loop()
        fd = sock.get(zmq.FD)
        loop.add_reader(fd, readable.set)
        waiting = self._waiting
        try:
            while True:
                # ZMQ_FD is edge-triggered: drain until EAGAIN before waiting on it again.
                while True:
                    try:
                        frame = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        envelope = self._codec.decode(frame)
                    except WireError:
                        continue
                    if envelope.kind == REPLIES_KIND:
                        answers, _ = unpack_batch(envelope)  # malformed items are dropped
                    else:
                        answers = [envelope]
                    for answer in answers:
                        if (entry := waiting.pop(answer.request_id, None)) is not None:
                            entry[0].take(entry[1], answer)
                readable.clear()
                if not sock.get(zmq.EVENTS) & zmq.POLLIN:
                    await readable.wait()
        except Exception:  # its node's requests would all time out: say why
            log.exception("async client: reading answers failed")
            raise
        finally:
            loop.remove_reader(fd)


def _everyone(answers: Answers) -> bool:
    """Wait for every node asked (status queries)."""
    return False
