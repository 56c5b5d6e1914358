"""The asyncio client without a running cluster: its write window, full send queues, close(), and
requests of one turn of the event loop sharing a frame (against a fake node).

The window: a new sequence number never runs more than `max_in_flight` ahead of the oldest
unanswered write (the cluster keeps only that many answers).
"""

import asyncio
import math
import threading
import time

import pytest
import zmq

import caddy.async_client
from caddy.async_client import AsyncClient
from caddy.client import Client, socket_options
from caddy.config import load_topology
from caddy.errors import Timeout, Unavailable, WireError
from caddy.replication.kv import KeyValueStore
from caddy.replication.requests import parse_request, result_reply, writes_entry
from caddy.replication.sessions import SessionStateMachine
from caddy.wire import BATCH_KIND, REPLIES_KIND, Codec
from tests.harness import write_topology


def test_a_slow_oldest_write_holds_back_new_sequence_numbers(tmp_path):
    client = AsyncClient(load_topology(write_topology(tmp_path, 3)), max_in_flight=8)
    sent: list[tuple[int, int]] = []  # (seq, ack) in the order requests went out
    release_first = asyncio.Event()

    async def fake_call(kind, body):
        sent.append((body["seq"], body["ack"]))
        if body["seq"] == 1:
            await release_first.wait()
        return None

    client._call = fake_call

    async def scenario():
        writes = [asyncio.create_task(client.put(f"k{i}", i)) for i in range(30)]
        for _ in range(50):  # let everything that may run, run
            await asyncio.sleep(0)
        assert max(seq for seq, _ in sent) == 8, "ran ahead of the unanswered seq 1"
        assert all(ack == 1 for _, ack in sent)
        release_first.set()
        await asyncio.gather(*writes)

    asyncio.run(scenario())
    assert sorted(seq for seq, _ in sent) == list(range(1, 31))


async def ticking(counter: list[int]) -> None:
    while True:
        counter[0] += 1
        await asyncio.sleep(0.01)


def test_full_send_queues_never_freeze_the_event_loop(tmp_path, monkeypatch):
    """Nobody listens and each node's queue holds one message: after the first request every send
    fails at once, and the client must still yield to the loop while it waits for its deadline."""

    def one_message_queue(sock):
        socket_options(sock)
        sock.setsockopt(zmq.SNDHWM, 1)

    monkeypatch.setattr(caddy.async_client, "socket_options", one_message_queue)
    client = AsyncClient(load_topology(write_topology(tmp_path, 3)), timeout=0.5)

    async def scenario():
        ticks = [0]
        ticker = asyncio.create_task(ticking(ticks))
        with pytest.raises(Unavailable):
            await client.put("k", 1)  # fills the queues
        before, started = ticks[0], time.monotonic()
        with pytest.raises((Unavailable, Timeout)):
            await client.put("k", 2)
        ran = ticks[0] - before
        ticker.cancel()
        await client.close()
        return ran, time.monotonic() - started

    ran, elapsed = asyncio.run(scenario())
    assert ran >= 5, f"the loop ran other tasks {ran} times in {elapsed:.2f} s"


def test_close_ends_requests_in_flight_and_leaves_nothing_open(tmp_path):
    client = AsyncClient(load_topology(write_topology(tmp_path, 3)), timeout=30)

    async def scenario():
        put = asyncio.create_task(client.put("k", 1))  # nobody listens: it keeps retrying
        for _ in range(20):
            await asyncio.sleep(0)
        await client.close()
        with pytest.raises(Unavailable):
            await asyncio.wait_for(put, 5)
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        return others

    assert asyncio.run(scenario()) == []
    assert client._sockets == {} and client._readers == []


class FakeNode:
    """A client ROUTER on a node's address, in a thread: it records every request frame and
    answers each `kv.*` request with `answer(body)`, a (kind, body) pair; a batch's answers in
    one kv.replies frame listing them last to first, plus one malformed item the client must
    skip."""

    def __init__(self, config, node_id, answer):
        self.codec = Codec(cluster=config.cluster, sender=node_id)
        self.answer = answer
        self.frames: list = []  # every decoded request frame, in order
        self.router = zmq.Context.instance().socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(config.node(node_id).client_address)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopping.is_set():
            if not self.router.poll(20):
                continue
            identity, frame = self.router.recv_multipart()
            request = self.codec.decode(frame)
            self.frames.append(request)
            if request.kind == BATCH_KIND:
                replies = [
                    [request_id, *self.answer(body)]
                    for request_id, _, body in reversed(request.body["requests"])
                ]
                reply = self.codec.encode_batch(REPLIES_KIND, [[1, "kv.ok"], *replies])
            elif request.kind.startswith("kv."):
                reply = self.codec.encode(*self.answer(request.body), request.request_id)
            else:
                reply = self.codec.encode(
                    "client.status.ok", {"state": "leader"}, request.request_id
                )
            self.router.send_multipart([identity, reply])

    def request_bodies(self):
        """The body of every request received, batched or not, in order."""
        bodies = []
        for frame in self.frames:
            if frame.kind == BATCH_KIND:
                bodies.extend(body for _, _, body in frame.body["requests"])
            else:
                bodies.append(frame.body)
        return bodies

    def close(self):
        self.stopping.set()
        self.thread.join(timeout=10)
        self.router.close()


@pytest.fixture
def one_node(tmp_path):
    """A one-node topology whose node is a FakeNode answering with the key's value doubled."""
    config = load_topology(write_topology(tmp_path, 1))
    node = FakeNode(config, "n1", lambda body: ("kv.ok", {"value": body["key"] * 2}))
    yield config, node
    node.close()


def test_requests_of_one_turn_leave_in_one_batch_and_their_replies_resolve_each(one_node):
    config, node = one_node

    async def scenario():
        async with AsyncClient(config, timeout=10) as client:
            puts = [client.put(f"p{n}", n) for n in range(40)]
            gets = [client.get(f"g{n}") for n in range(40)]
            results = await asyncio.gather(*puts, *gets, client.status("n1"))
            return results, client._waiting

    results, waiting = asyncio.run(scenario())
    assert results[40:80] == [f"g{n}" * 2 for n in range(40)]
    assert results[-1] == {"state": "leader"}
    assert not waiting
    (batch,) = [frame for frame in node.frames if frame.kind == BATCH_KIND]
    (status,) = [frame for frame in node.frames if frame.kind == "client.status"]
    assert len(node.frames) == 2, "more frames than one batch and one status"
    items = batch.body["requests"]
    assert [kind for _, kind, _ in items] == ["kv.put"] * 40 + ["kv.get"] * 40
    assert [body["key"] for _, _, body in items] == [f"p{n}" for n in range(40)] + [
        f"g{n}" for n in range(40)
    ]
    assert sorted(body["seq"] for _, _, body in items[:40]) == list(range(1, 41))
    assert len({request_id for request_id, _, _ in items}) == 80
    assert status.request_id not in {request_id for request_id, _, _ in items}


def test_a_lone_request_goes_as_a_plain_frame(one_node):
    config, node = one_node

    async def scenario():
        async with AsyncClient(config, timeout=10) as client:
            first = await client.get("a")
            second = await client.put("b", 1)
            return first, second

    assert asyncio.run(scenario()) == ("aa", None)
    assert [(frame.kind, frame.body["key"]) for frame in node.frames] == [
        ("kv.get", "a"),
        ("kv.put", "b"),
    ]


def test_an_unencodable_request_fails_alone_and_its_turn_mates_still_go(one_node):
    config, node = one_node

    async def scenario():
        async with AsyncClient(config, timeout=10) as client:
            return await asyncio.gather(
                client.get("x"), client.put("bad", {1, 2}), client.get("y"), return_exceptions=True
            )

    first, bad, last = asyncio.run(scenario())
    assert (first, last) == ("xx", "yy")
    assert isinstance(bad, WireError)
    assert [frame.kind for frame in node.frames] == ["kv.get", "kv.get"]
    assert sorted(body["key"] for body in node.request_bodies()) == ["x", "y"]


def test_writes_answered_only_with_retry_later_time_out_and_every_retry_keeps_its_seq(tmp_path):
    config = load_topology(write_topology(tmp_path, 1))
    node = FakeNode(config, "n1", lambda body: ("kv.error", {"error": "busy", "retry": True}))

    async def scenario():
        async with AsyncClient(config, timeout=0.5) as client:
            return await asyncio.gather(
                client.put("a", 1), client.put("b", 2), return_exceptions=True
            )

    try:
        results = asyncio.run(scenario())
    finally:
        node.close()
    assert [type(result) for result in results] == [Timeout, Timeout]  # answered: not Unavailable
    sent = [(body["key"], body["seq"]) for body in node.request_bodies()]
    assert sent.count(("a", 1)) >= 3 and sent.count(("b", 2)) >= 3, sent
    assert set(sent) == {("a", 1), ("b", 2)}
    assert any(frame.kind == BATCH_KIND for frame in node.frames)


def test_statuses_wait_for_the_nodes_that_answer_when_another_ones_queue_is_full(
    tmp_path, monkeypatch
):
    def one_message_queue(sock):
        socket_options(sock)
        sock.setsockopt(zmq.SNDHWM, 1)

    monkeypatch.setattr(caddy.async_client, "socket_options", one_message_queue)
    config = load_topology(write_topology(tmp_path, 3))
    nodes = [FakeNode(config, node_id, lambda body: ("kv.ok", {})) for node_id in ("n2", "n3")]

    async def scenario():  # n1 is down: after the first call its queue is full
        async with AsyncClient(config, timeout=1.0) as client:
            return [await client.statuses() for _ in range(3)]

    try:
        for statuses in asyncio.run(scenario()):
            assert statuses["n1"] is None
            assert statuses["n2"] is not None and statuses["n3"] is not None
    finally:
        for node in nodes:
            node.close()


class SessionNode:
    """A FakeNode that applies writes to a real session state machine, one per request, with
    room for one session only: another client's write evicts ours."""

    def __init__(self, config):
        self.machine = SessionStateMachine(KeyValueStore(), max_sessions=1)
        self.node = FakeNode(config, "n1", self.answer)

    def answer(self, body):
        kind = "kv.put" if "value" in body else "kv.delete"
        [result] = self.machine.apply_batch(writes_entry([parse_request(kind, body)], 1))
        return result_reply(result)

    def evict(self):
        self.answer({"key": "other", "value": 0, "client": "another", "seq": 1, "ack": 1})


@pytest.fixture
def session_node(tmp_path):
    config = load_topology(write_topology(tmp_path, 1))
    node = SessionNode(config)
    yield config, node
    node.node.close()


def test_async_writes_go_on_in_a_new_session_when_the_cluster_dropped_the_old_one(session_node):
    config, node = session_node

    async def scenario():
        async with AsyncClient(config, timeout=2.0) as client:
            with pytest.raises(WireError):
                await client.put("k", {1, 2})  # never sent: seq 1 is answered by the client
            await client.put("k", 1)  # seq 2, ack 2: unknown to the cluster
            first_session = client.client_id
            node.evict()
            await asyncio.gather(*(client.put(f"k{i}", i) for i in range(5)))
            return first_session, client.client_id

    first_session, last_session = asyncio.run(scenario())
    assert first_session != last_session
    assert [node.machine.inner.read(f"k{i}") for i in range(5)] == list(range(5))
    assert node.machine.inner.read("k") == 1


def test_sync_writes_go_on_in_a_new_session_when_the_cluster_dropped_the_old_one(session_node):
    config, node = session_node
    with Client(config, timeout=2.0) as client:
        with pytest.raises(WireError):
            client.put("k", {1, 2})
        client.put("k", 1)
        first_session = client.client_id
        node.evict()
        assert client.delete("k") is True
        assert client.client_id != first_session
    assert node.machine.inner.read("k") is None


def test_a_client_without_a_deadline_waits_for_its_answers(one_node):
    config, node = one_node

    async def scenario():
        async with AsyncClient(config, timeout=math.inf) as client:
            return await client.status("n1"), await client.get("ab")

    status, value = asyncio.run(scenario())
    assert status["state"] == "leader" and value == "abab"
