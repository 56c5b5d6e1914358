"""The asyncio client of a CADDY cluster: many concurrent requests over one socket per node.

The operations, errors and retry policy of `caddy.client.Client`, as coroutines. Every write
still carries the client's session id and a sequence number of its own, so writes in flight
together, and their retries after a failover, are each applied at most once.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from caddy.client import check_key, client_codec, socket_options, topology_of
from caddy.config import ClusterConfig
from caddy.errors import Unavailable, WireError
from caddy.replication.sessions import MAX_RESULTS_PER_SESSION
from caddy.request_policy import RequestPolicy, answer_body, decisive, leader_of
from caddy.wire import Envelope

__all__ = ["AsyncClient"]

log = logging.getLogger(__name__)


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
        self.client_id = uuid.uuid4().hex
        self._codec = client_codec(self.config)
        self._context = zmq.Context.instance()
        self._sockets: dict[str, zmq.Socket] = {}
        self._readable: dict[str, asyncio.Event] = {}  # set: the node's socket may have input
        self._sent_unchecked: set[str] = set()  # nodes sent to since their last input check
        self._readers: list[asyncio.Task[None]] = []
        self._waiting: dict[int, Callable[[Envelope], None]] = {}  # by request id
        self._request_ids = itertools.count(1)
        self._node_ids = [node.id for node in self.config.nodes if node.role != "witness"]
        self._leader: str | None = None
        self._seq = 0
        self._unanswered: set[int] = set()  # seqs of writes in flight
        self._max_in_flight = max_in_flight
        self._window_waiters: list[asyncio.Future[None]] = []
        self._asking: set[asyncio.Future[None]] = set()  # one per attempt under way
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop: requests still running end with Unavailable, nothing is reopened."""
        self._closed = True
        for settled in self._asking:
            _settle(settled)
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
        return await self._call("kv.get", {"key": check_key(key)})

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
        answer = (await self._ask([node_id], "client.status", {}, self.timeout, _everyone))[node_id]
        if answer is None:
            raise Unavailable(f"node {node_id} did not answer within {self.timeout:g} s")
        return answer_body(answer)

    async def statuses(self) -> dict[str, dict[str, Any] | None]:
        """Every node's status, asked in parallel; None for a node that did not answer."""
        node_ids = [node.id for node in self.config.nodes]
        answers = await self._ask(node_ids, "client.status", {}, self.timeout, _everyone)
        return {node: None if a is None else answer_body(a) for node, a in answers.items()}

    async def _write(self, kind: str, body: dict[str, Any]) -> Any:
        # The cluster keeps answers from the lowest unanswered seq on, so a new seq may run at
        # most `max_in_flight` ahead of it: a window, not just a count of writes in flight.
        while not self._window_open():
            waiter = asyncio.get_running_loop().create_future()
            self._window_waiters.append(waiter)
            await waiter
        self._seq += 1  # a retry of this write reuses the number: the cluster applies it once
        seq = self._seq
        self._unanswered.add(seq)
        try:
            # `ack`: every write below the lowest unanswered one has had its answer
            session = {"client": self.client_id, "seq": seq, "ack": min(self._unanswered)}
            return await self._call(kind, {**body, **session})
        finally:  # no await in here: a cancellation cannot skip waking the waiters
            self._unanswered.discard(seq)
            waiters, self._window_waiters = self._window_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _window_open(self) -> bool:
        return not self._unanswered or self._seq + 1 - min(self._unanswered) < self._max_in_flight

    async def _call(self, kind: str, body: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        policy = RequestPolicy(
            self._node_ids, self._leader, loop.time() + self.timeout, self.timeout
        )
        while (attempt := policy.attempt(loop.time())) is not None:
            asked, wait = attempt
            started = loop.time()
            answers = await self._ask(asked, kind, body, wait)
            if policy.settle(asked, answers):
                self._leader = policy.served_by
                return policy.value
            if not any(answers.values()) and not self._closed:  # maybe nothing left: no spin
                await asyncio.sleep(max(0.0, wait - (loop.time() - started)))
            if policy.backoff:
                await asyncio.sleep(min(policy.backoff, max(0.0, policy.deadline - loop.time())))
        self._leader = None
        raise policy.failure()

    # ----- requests ----------------------------------------------------------------------------

    async def _ask(
        self,
        node_ids: list[str],
        kind: str,
        body: dict[str, Any],
        timeout: float,
        until: Callable[[dict[str, Envelope | None]], bool] = decisive,
    ) -> dict[str, Envelope | None]:
        """Send one request to each node; their answers, until `until` holds, every node asked
        answered, or `timeout` passed."""
        loop = asyncio.get_running_loop()
        answers: dict[str, Envelope | None] = dict.fromkeys(node_ids)
        sent = {}
        for node_id in node_ids:
            request_id = next(self._request_ids)
            if self._send(node_id, self._codec.encode(kind, body, request_id)):
                sent[request_id] = node_id
        if not sent:
            return answers
        # Answers are taken by the reader tasks, which run only once this task awaits.
        settled: asyncio.Future[None] = loop.create_future()
        for request_id, node_id in sent.items():
            self._waiting[request_id] = functools.partial(
                _take_answer, answers, node_id, settled, len(sent), until
            )
        self._asking.add(settled)
        expiry = loop.call_later(timeout, _settle, settled)
        try:
            await settled
        finally:
            expiry.cancel()
            self._asking.discard(settled)
            for request_id in sent:  # a late answer finds nobody waiting: dropped
                self._waiting.pop(request_id, None)
        return answers

    def _send(self, node_id: str, frame: bytes) -> bool:
        sock = self._socket(node_id)
        try:
            sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return False
        if node_id not in self._sent_unchecked:  # a send may take the ZMQ_FD edge: look once
            self._sent_unchecked.add(node_id)  # the sends of this turn of the loop are done
            asyncio.get_running_loop().call_soon(self._look_for_input, node_id)
        return True

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
                    deliver = self._waiting.pop(envelope.request_id, None)
                    if deliver is not None:
                        deliver(envelope)
                readable.clear()
                if not sock.get(zmq.EVENTS) & zmq.POLLIN:
                    await readable.wait()
        except Exception:  # its node's requests would all time out: say why
            log.exception("async client: reading answers failed")
            raise
        finally:
            loop.remove_reader(fd)


def _take_answer(
    answers: dict[str, Envelope | None],
    node_id: str,
    settled: asyncio.Future[None],
    asked: int,
    until: Callable[[dict[str, Envelope | None]], bool],
    answer: Envelope,
) -> None:
    answers[node_id] = answer
    if until(answers) or sum(a is not None for a in answers.values()) == asked:
        _settle(settled)


def _everyone(answers: dict[str, Envelope | None]) -> bool:
    """Wait for every node asked (status queries)."""
    return False


def _settle(settled: asyncio.Future[None]) -> None:
    if not settled.done():
        settled.set_result(None)
