"""The Python client of a CADDY cluster : one DEALER per node, request ids.

With `caddy.async_client`, the only modules of `caddy/` that touch sockets. One `Client` per
thread.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import zmq

from caddy.bounds import MAX_NAME_LENGTH
from caddy.config import ClusterConfig, load_topology
from caddy.errors import CaddyError, Timeout, Unavailable, WireError
from caddy.lock import LeaseKeeper, Lock
from caddy.replication.locks import MAX_TTL_MS
from caddy.request_policy import (
    RequestFailed,
    RequestPolicy,
    SessionExpired,
    answer_body,
    check_size,
    decisive,
    leader_of,
)
from caddy.wire import Codec, Envelope

__all__ = [
    "Client",
    "RequestFailed",
    "check_key",
    "client_codec",
    "socket_options",
    "topology_of",
]


class Client:
    """Talks to the client endpoints of a cluster's nodes."""

    def __init__(self, topology: str | os.PathLike[str] | ClusterConfig, timeout: float = 5.0):
        self.config = topology_of(topology)
        self.timeout = timeout
        self._codec = client_codec(self.config)
        self._context = zmq.Context.instance()
        self._sockets: dict[str, zmq.Socket] = {}
        self._request_ids = itertools.count(1)
        self.client_id = uuid.uuid4().hex
        self._seq = 0
        self._leader: str | None = None
        self._node_ids = [node.id for node in self.config.nodes if node.role != "witness"]
        self._keeper: LeaseKeeper | None = None  # renews this client's locks, from the first

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets and stop renewing leases (locks still held then lapse)."""
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None
        for sock in self._sockets.values():
            sock.close(0)
        self._sockets.clear()

    # ----- key-value operations (linearizable; writes applied exactly once) ---------------------

    def put(self, key: str, value: Any, fence: Lock | None = None) -> None:
        """Store `value` under `key`; returns once committed and applied. With `fence`, applied
        only while that lock's token still holds it, else FencedOut (and not applied)."""
        self._write("kv.put", _fenced({"key": check_key(key), "value": value}, fence))

    def get(self, key: str) -> Any:
        """The value under `key`, or None when absent; linearizable (ReadIndex on the leader)."""
        body = {"key": check_key(key)}
        check_size("kv.get", body, self.config.transport.max_message_bytes)
        return self._call("kv.get", body)

    def delete(self, key: str, fence: Lock | None = None) -> bool:
        """Remove `key`; True when it existed. `fence` as for `put`."""
        return bool(self._write("kv.delete", _fenced({"key": check_key(key)}, fence)))

    def cas(self, key: str, expected: Any, new: Any, fence: Lock | None = None) -> bool:
        """Set `key` to `new` if it holds `expected` (None: absent); True when swapped. `fence`
        as for `put`."""
        body = {"key": check_key(key), "expected": expected, "new": new}
        return bool(self._write("kv.cas", _fenced(body, fence)))

    # ----- the service registry (CONTRACT 7) -----------------------------------------------------

    def change_backend(
        self, op: str, service: str, backend: str, address: str = "", weight: int = 0
    ) -> list[dict[str, Any]]:
        """Change the replicated service registry (`caddy-ctl backend`): `op` add (with
        `address` tcp://HOST:PORT and `weight`), remove, weight (with `weight`), drain or
        undrain `backend` of `service`. Returns the service's backends afterwards
        ([{id, address, weight, draining}]); RequestFailed with the reason when refused (an
        unknown service or backend, a backend added twice, a bad address or weight)."""
        body = {"op": op, "service": service, "backend": backend, "address": address}
        return self._write("kv.backend", {**body, "weight": weight})

    def pick(self, service: str, key: str | None = None) -> dict[str, str]:
        """The backend a node's balancer picks for `service` now (CONTRACT 7): {id, address};
        `key` (a client address, say) for `ip_hash`. RequestFailed when there is no such
        service or no backend to pick."""
        body: dict[str, Any] = {"service": service}
        if key is not None:
            body["key"] = key
        return self._call("balance.pick", body)

    def report(self, service: str, backend: str, ok: bool) -> None:
        """Tell the balancer how a use of `backend` went: failures in a row eject it a while."""
        self._call("balance.report", {"service": service, "backend": backend, "ok": ok})

    # ----- locks (CONTRACT 5) --------------------------------------------------------------------

    def lock(self, name: str, ttl: float = 10.0, wait: float = 0.0) -> Lock:
        """Acquire the lock `name` under a lease of `ttl` seconds, renewed in the background
        until released; waiting in line up to `wait` seconds when another holds it (Timeout
        when not acquired by then). The token is greater than every token granted before for
        `name`. Use it as a context manager to release it."""
        ttl_ms, wait_ms = _lock_times(ttl, wait)
        owner = uuid.uuid4().hex
        names = {"name": check_lock_name(name), "owner": owner}
        sent = time.monotonic()
        deadline = sent + wait
        value = self._write("kv.lock", {**names, "ttl_ms": ttl_ms, "wait_ms": wait_ms})
        while value["token"] is None:
            if not value.get("queued") or time.monotonic() >= deadline:
                self._give_up_waiting(names, queued=bool(value.get("queued")))
                raise Timeout(f"lock {name!r} was not acquired within {wait:g} s")
            sent = time.monotonic()
            value = self._call("kv.lock_wait", names)  # the leader answers within ~0.2 s
        lease_s = value.get("remaining_ms", ttl_ms) / 1000
        token = value["token"]

        def renew(renewing: Client) -> float | None:
            started = time.monotonic()
            renewed = renewing._write("kv.renew", {**names, "token": token})
            return started + ttl if renewed["token"] is not None else None

        if self._keeper is None:
            self._keeper = LeaseKeeper(lambda: Client(self.config))
        return Lock(
            name,
            owner,
            token,
            ttl,
            sent + lease_s,
            renew=renew,
            release=lambda wait: (self._write if wait else self._send_write)("kv.unlock", names),
            keeper=self._keeper,
        )

    def _give_up_waiting(self, names: dict[str, str], queued: bool) -> None:
        """Leave the line (or release a grant that came too late); the cluster drops the
        waiter at its wait's end anyway, so a failure here loses nothing."""
        if not queued:
            return
        try:
            self._write("kv.unlock", names)
        except CaddyError:
            pass

    def leader(self) -> str | None:
        """The id of the node that leads in the highest term any node reports, if any."""
        return leader_of(self.statuses())

    def _write(self, kind: str, body: dict[str, Any]) -> Any:
        if "key" in body:  # a key-value write; a lock's fields are small and checked on the way
            check_size(kind, body, self.config.transport.max_message_bytes)
        try:
            return self._write_in_session(kind, body)
        except SessionExpired as expired:
            if expired.retried:
                raise
            # The cluster applied nothing: the same write opens a new session.
            self.client_id, self._seq = uuid.uuid4().hex, 0
            return self._write_in_session(kind, body)

    def _send_write(self, kind: str, body: dict[str, Any]) -> None:
        """Send a write to the known leader without waiting for its answer (which is skipped
        when it comes, by its request id); with no leader known, write and wait. The write is
        never retried: the next write acknowledges its seq."""
        if self._leader is None:
            self._write(kind, body)
            return
        self._seq += 1
        envelope = {**body, "client": self.client_id, "seq": self._seq, "ack": self._seq}
        try:
            self._socket(self._leader).send(
                self._codec.encode(kind, envelope, next(self._request_ids)), zmq.NOBLOCK
            )
        except zmq.Again:  # its queue is full: the leader is long gone
            self._write(kind, body)

    def _write_in_session(self, kind: str, body: dict[str, Any]) -> Any:
        self._seq += 1  # a retry of this write reuses the number: the cluster applies it once
        return self._call(
            kind, {**body, "client": self.client_id, "seq": self._seq, "ack": self._seq}
        )

    def _call(self, kind: str, body: dict[str, Any]) -> Any:
        """Get an answer from the leader, retrying across redirects and failovers (see
        `RequestPolicy`)."""
        policy = RequestPolicy(
            self._node_ids, self._leader, time.monotonic() + self.timeout, self.timeout
        )
        while (attempt := policy.attempt(time.monotonic())) is not None:
            asked, wait = attempt
            started = time.monotonic()
            if len(asked) == 1:  # the common case, without gather's bookkeeping
                answers = {asked[0]: self._ask_one(asked[0], kind, body, wait)}
            else:
                answers = self.gather(asked, kind, body, wait, raw=True, until=decisive)
            if policy.settle(asked, answers):
                self._leader = policy.served_by
                return policy.value
            if not any(answers.values()):  # maybe nothing left (full queues): no busy loop
                time.sleep(max(0.0, wait - (time.monotonic() - started)))
            if policy.backoff:
                time.sleep(min(policy.backoff, max(0.0, policy.deadline - time.monotonic())))
        self._leader = None
        raise policy.failure()

    def _ask_one(
        self, node_id: str, kind: str, body: dict[str, Any], timeout: float
    ) -> Envelope | None:
        """`gather` for one node, without its bookkeeping: the answer, or None on silence."""
        sock = self._socket(node_id)
        request_id = next(self._request_ids)
        try:
            sock.send(self._codec.encode(kind, body, request_id), zmq.NOBLOCK)
        except zmq.Again:
            return None
        deadline = time.monotonic() + timeout
        while (remaining_ms := (deadline - time.monotonic()) * 1000) > 0:
            if not sock.poll(remaining_ms):
                return None
            envelope = self._receive(sock)
            if envelope is not None and envelope.request_id == request_id:
                return envelope
        return None

    # ----- requests ----------------------------------------------------------------------------

    def status(self, node_id: str) -> dict[str, Any]:
        """The status document of one node; Unavailable when it does not answer in time."""
        return self._ask_node(node_id, "client.status", {})

    def statuses(self) -> dict[str, dict[str, Any] | None]:
        """Every node's status, asked in parallel; None for a node that did not answer."""
        return self.gather([n.id for n in self.config.nodes], "client.status", {}, self.timeout)

    def drain(self, node_id: str, timeout_s: float | None = None) -> None:
        """Start draining `node_id` (CONTRACT 6): it takes no new requests, finishes those in
        flight within `timeout_s` (its topology's drain timeout by default) and hands
        leadership over if it leads. Returns once it started; its status shows the progress
        (`failover.drain`). Unavailable when the node does not answer."""
        body = {} if timeout_s is None else {"timeout_s": timeout_s}
        self._ask_node(node_id, "client.drain", body)

    def undrain(self, node_id: str) -> bool:
        """`node_id` takes client requests again; False when it was not draining."""
        return bool(self._ask_node(node_id, "client.undrain", {}).get("undrained"))

    def reload(self, node_id: str) -> dict[str, Any]:
        """`node_id` re-reads its topology file and takes the live settings (CONTRACT 8, like
        SIGHUP): `{"applied": [...], "restart_needed": [...], "notes": [...]}`, each a line
        ("raft.election_timeout_min_ms 150 -> 400"), or `{"error": [lines]}` for a file that
        does not load (then nothing changed)."""
        return self._ask_node(node_id, "client.reload", {})

    def admin(self, kind: str, body: dict[str, Any]) -> Any:
        """An operator request (`admin.change`, `admin.transfer`, `admin.check_restart`:
        CONTRACT 8), answered by the leader; RequestFailed with the reason when it refuses."""
        return self._call(kind, body)

    def _ask_node(self, node_id: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """One node's answer to an operator request; Unavailable when it does not answer."""
        answers = self.gather([node_id], kind, body, self.timeout)
        if answers.get(node_id) is None:
            raise Unavailable(f"node {node_id} did not answer within {self.timeout:g} s")
        return answers[node_id]

    def members(self) -> dict[str, Any]:
        """The membership view of the first node that answers."""
        answers = self.gather(
            [n.id for n in self.config.nodes],
            "client.members",
            {},
            self.timeout,
            until=lambda answers: any(a is not None for a in answers.values()),
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
        until: Callable[[dict[str, Any]], bool] | None = None,
        raw: bool = False,
        bodies: Mapping[str, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Send one request to each node and collect the answers until `timeout` passes.

        Answers are bodies (an error answer raises RequestFailed), or whole envelopes with `raw`.
        `bodies`: a node's own body instead of `body`.
        """
        deadline = time.monotonic() + timeout
        pending: dict[str, int] = {}
        answers: dict[str, Any] = {}
        for node_id in node_ids:
            self.config.node(node_id)  # a ConfigError naming the unknown node
            request_id = next(self._request_ids)
            answers[node_id] = None
            try:
                request = (bodies or {}).get(node_id, body)
                self._socket(node_id).send(
                    self._codec.encode(kind, request, request_id), zmq.NOBLOCK
                )
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
                answers[node_id] = envelope if raw else answer_body(envelope)
            if until is not None and until(answers):
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
            socket_options(sock)
            sock.connect(self.config.node(node_id).client_address)
            self._sockets[node_id] = sock
        return sock


def topology_of(topology: str | os.PathLike[str] | ClusterConfig) -> ClusterConfig:
    return topology if isinstance(topology, ClusterConfig) else load_topology(topology)


def client_codec(config: ClusterConfig) -> Codec:
    return Codec(
        cluster=config.cluster,
        sender=f"client-{os.getpid()}",
        max_message_bytes=config.transport.max_message_bytes,
    )


def socket_options(sock: zmq.Socket) -> None:
    """A client's DEALER to one node: never lingers, bounded queue, quick reconnects."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)


def check_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"keys are str, got {type(key).__name__}")
    return key


def check_lock_name(name: str) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        raise ValueError(f"a lock name is a str of 1 to {MAX_NAME_LENGTH} characters")
    return name


def _lock_times(ttl: float, wait: float) -> tuple[int, int]:
    """The ttl and wait in whole ms, as the cluster takes them; ValueError outside its bounds."""
    limit_s = MAX_TTL_MS / 1000
    if not 0.001 <= ttl <= limit_s or not 0 <= wait <= limit_s:
        raise ValueError(f"ttl must be 0.001 to {limit_s:g} s and wait 0 to {limit_s:g} s")
    return round(ttl * 1000), round(wait * 1000)


def _fenced(body: dict[str, Any], fence: Lock | None) -> dict[str, Any]:
    if fence is not None:
        body["fence"] = [fence.name, fence.token]
    return body
