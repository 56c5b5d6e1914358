"""The Python client of a CADDY cluster (CONTRACT section 4): one DEALER per node, request ids.

It is the only module of `caddy/` that touches sockets. One `Client` per thread.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable
from typing import Any

import zmq

from caddy.config import ClusterConfig, load_topology
from caddy.errors import CaddyError, Unavailable, WireError
from caddy.wire import Codec, Envelope


class RequestFailed(CaddyError):
    """The node answered with an error."""


class Client:
    """Talks to the client endpoints of a cluster's nodes."""

    def __init__(self, topology: str | os.PathLike[str] | ClusterConfig, timeout: float = 5.0):
        self.config = topology if isinstance(topology, ClusterConfig) else load_topology(topology)
        self.timeout = timeout
        self._codec = Codec(
            cluster=self.config.cluster,
            sender=f"client-{os.getpid()}",
            max_message_bytes=self.config.transport.max_message_bytes,
        )
        self._context = zmq.Context.instance()
        self._sockets: dict[str, zmq.Socket] = {}
        self._request_ids = itertools.count(1)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close(0)
        self._sockets.clear()

    # ----- requests ----------------------------------------------------------------------------

    def status(self, node_id: str) -> dict[str, Any]:
        """The status document of one node; Unavailable when it does not answer in time."""
        answers = self.gather([node_id], "client.status", {}, self.timeout)
        if answers.get(node_id) is None:
            raise Unavailable(f"node {node_id} did not answer within {self.timeout:g} s")
        return answers[node_id]

    def statuses(self) -> dict[str, dict[str, Any] | None]:
        """Every node's status, asked in parallel; None for a node that did not answer."""
        return self.gather([n.id for n in self.config.nodes], "client.status", {}, self.timeout)

    def members(self) -> dict[str, Any]:
        """The membership view of the first node that answers."""
        answers = self.gather(
            [n.id for n in self.config.nodes], "client.members", {}, self.timeout, first_only=True
        )
        for answer in answers.values():
            if answer is not None:
                return answer["members"]
        raise Unavailable(f"no node answered within {self.timeout:g} s")

    def gather(
        self,
        node_ids: Iterable[str],
        kind: str,
        body: dict[str, Any],
        timeout: float,
        first_only: bool = False,
    ) -> dict[str, dict[str, Any] | None]:
        """Send one request to each node and collect the answers until `timeout` passes."""
        deadline = time.monotonic() + timeout
        pending: dict[str, int] = {}
        answers: dict[str, dict[str, Any] | None] = {}
        for node_id in node_ids:
            self.config.node(node_id)  # a ConfigError naming the unknown node
            request_id = next(self._request_ids)
            answers[node_id] = None
            try:
                self._socket(node_id).send(self._codec.encode(kind, body, request_id), zmq.NOBLOCK)
            except zmq.Again:  # its queue is full: that node is long unreachable
                continue
            pending[node_id] = request_id
        poller = zmq.Poller()
        by_socket = {self._sockets[node_id]: node_id for node_id in pending}
        for sock in by_socket:
            poller.register(sock, zmq.POLLIN)
        while pending:
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0:
                break
            for sock, _ in poller.poll(remaining_ms):
                node_id = by_socket[sock]
                envelope = self._receive(sock)
                if envelope is None or envelope.request_id != pending.get(node_id):
                    continue  # garbage or a late answer to an earlier request
                del pending[node_id]
                answers[node_id] = _unwrap(envelope)
            if first_only and any(a is not None for a in answers.values()):
                break
        return answers

    def _receive(self, sock: zmq.Socket) -> Envelope | None:
        try:
            return self._codec.decode(sock.recv(zmq.NOBLOCK))
        except (zmq.Again, WireError):
            return None

    def _socket(self, node_id: str) -> zmq.Socket:
        sock = self._sockets.get(node_id)
        if sock is None:
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 1000)
            sock.setsockopt(zmq.RECONNECT_IVL, 50)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            sock.connect(self.config.node(node_id).client_address)
            self._sockets[node_id] = sock
        return sock


def _unwrap(envelope: Envelope) -> dict[str, Any]:
    if envelope.kind == "client.error":
        raise RequestFailed(str(envelope.body.get("error", "unknown error")))
    return envelope.body
