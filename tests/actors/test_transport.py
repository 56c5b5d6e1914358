"""The transport over real loopback sockets: delivery, peer view, and garbage of every kind."""

import dataclasses
import os
import queue
import random
import socket
import threading
from urllib.parse import urlsplit

import msgpack
import pytest
import zmq

from actors.transport import ClientRoute, Inbound, InboundBatch, Transport, connect_endpoint
from caddy.config import load_topology
from caddy.wire import PROTOCOL_VERSION, Codec
from tests.fuzz.zmtp import zmtp_connect, zmtp_frame
from tests.harness import wait_until, write_topology

LIMIT = 64 * 1024


@pytest.fixture
def pair(tmp_path):
    """Two running transports n1 and n2 of one cluster, each delivering `test.*` into a queue."""
    config = load_topology(
        write_topology(
            tmp_path,
            2,
            transport={"max_message_bytes": LIMIT, "peer_heartbeat_ms": 50, "peer_silence_ms": 500},
            raft={"max_append_bytes": LIMIT // 2},
            replication={"snapshot_chunk_bytes": LIMIT // 2},
        )
    )
    transports, inboxes = {}, {}
    for node_id in ("n1", "n2"):
        inboxes[node_id] = queue.SimpleQueue()
        transport = Transport(config, node_id)
        transport.register("test", inboxes[node_id].put)
        transport.register("client", inboxes[node_id].put)
        transports[node_id] = transport
    for transport in transports.values():
        transport.start()
    yield config, transports, inboxes
    for transport in transports.values():
        transport.stop()


def test_connect_endpoint_binds_the_source_ip():
    assert connect_endpoint("tcp://127.0.0.2:7000", "tcp://127.0.0.3:7001") == (
        "tcp://127.0.0.2:0;127.0.0.3:7001"
    )
    assert connect_endpoint("tcp://0.0.0.0:7000", "tcp://10.0.0.1:1") == "tcp://10.0.0.1:1"
    assert connect_endpoint("tcp://localhost:7000", "tcp://h:1") == "tcp://h:1"


def test_messages_flow_both_ways_and_peers_hear_each_other(pair):
    _, transports, inboxes = pair
    wait_until(
        lambda: (
            transports["n1"].peer_stats()["n2"].connected
            and transports["n2"].peer_stats()["n1"].connected
        ),
        10,
        "both connected",
    )
    transports["n1"].send("n2", "test.ping", {"n": 1})
    transports["n2"].send("n1", "test.pong", {"n": 2, "blob": b"x" * 10_000})
    got = inboxes["n2"].get(timeout=10)
    assert (got.envelope.sender, got.envelope.kind, got.envelope.body) == (
        "n1",
        "test.ping",
        {"n": 1},
    )
    assert inboxes["n1"].get(timeout=10).envelope.body["blob"] == b"x" * 10_000
    wait_until(lambda: transports["n1"].peer_stats()["n2"].msgs_out >= 1, 10, "n1 counts its send")
    stats = transports["n1"].peer_stats()["n2"]
    assert stats.connected and stats.hearing and stats.msgs_in >= 1 and stats.bytes_out > 0


def test_messages_to_a_dead_peer_are_dropped_not_queued(pair):
    config, transports, _ = pair
    transports["n2"].stop()
    wait_until(lambda: not transports["n1"].peer_stats()["n2"].connected, 10, "n2 disconnected")
    sent = [transports["n1"].send("n2", "test.ping", {}) for _ in range(100)]
    assert not any(sent), "a message to a disconnected peer was reported as sent"
    wait_until(lambda: transports["n1"].peer_stats()["n2"].drops_out >= 100, 10, "100 drops")
    transports["n2"] = Transport(config, "n2")  # so the fixture stops a live one


def raw_dealer(address, identity=None):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(address)
    return sock


def envelope(
    *,
    version=PROTOCOL_VERSION,
    cluster="test",
    sender="n1",
    kind="test.x",
    request_id=0,
    flags=0,
    body=None,
):
    return msgpack.packb(
        [version, cluster, sender, kind, request_id, flags, {} if body is None else body]
    )


GARBAGE_FRAMES = {
    "random bytes": [os.urandom(100)],
    "empty frame": [b""],
    "truncated msgpack": [envelope()[:-2]],
    "wrong version": [envelope(version=7)],
    "wrong cluster": [envelope(cluster="other")],
    "unknown kind": [envelope(kind="nosuch.kind")],
    "unknown sender": [envelope(sender="n99")],
    "mistyped request id": [envelope(request_id="7")],
    "mistyped body": [envelope(body=[1, 2])],
    "bad compressed body": [envelope(flags=1, body=b"zzz")],
    "oversized frame": [b"\x00" * (LIMIT + 10)],
    "two frames": [envelope(), envelope()],
}


@pytest.mark.parametrize("endpoint", ["address", "client_address"])
def test_garbage_from_zeromq_is_dropped_and_counted(pair, endpoint):
    config, transports, inboxes = pair
    target = transports["n2"]
    before = sum(target.drop_counts().values())
    expected = len(GARBAGE_FRAMES)
    if endpoint == "client_address":
        expected -= 1  # a client request may name any sender: "unknown sender" is a peer rule
    sockets = []
    for frames in GARBAGE_FRAMES.values():  # each on a connection of its own: see the next test
        sockets.append(raw_dealer(getattr(config.node("n2"), endpoint)))
        sockets[-1].send_multipart(frames)
    wait_until(
        lambda: sum(target.drop_counts().values()) - before >= expected,
        10,
        f"{expected} drops, got {target.drop_counts()}",
    )
    counts = target.drop_counts()
    assert counts["oversized"] >= 1 and counts["foreign-cluster"] >= 1
    assert counts["unknown-kind"] >= 1 and counts["frame-count"] >= 1
    assert counts.get("cut-connection", 0) == 0
    for sock in sockets:
        sock.close()
    assert_still_serving(transports, inboxes)


@pytest.mark.parametrize("endpoint", ["address", "client_address"])
def test_a_connection_that_sends_a_hostile_frame_is_cut_and_the_rest_dropped_unread(pair, endpoint):
    config, transports, inboxes = pair
    target = transports["n2"]
    closed = target.closed_connections
    # One write of raw ZMTP, so that libzmq reads the hostile frame and the 100 after it in one
    # go, before the transport sees the first (what it had not read when the cut resets the
    # connection would be gone unread, and uncounted).
    port = int(getattr(config.node("n2"), endpoint).rsplit(":", 1)[1])
    sock = zmtp_connect(port, b"DEALER")
    hostile = zmtp_frame(envelope(cluster="other"))  # no correct peer or client sends that
    sock.sendall(hostile + zmtp_frame(envelope(kind="test.ping")) * 100)  # well formed, but after
    wait_until(lambda: target.closed_connections > closed, 10, "the connection cut")
    wait_until(
        lambda: (
            target.drop_counts().get("foreign-cluster", 0) == 1
            and target.drop_counts().get("cut-connection", 0) >= 1
        ),
        10,
        f"the rest dropped unread, got {target.drop_counts()}",
    )
    delivered = [inboxes["n2"].get_nowait() for _ in range(inboxes["n2"].qsize())]
    assert not [m for m in delivered if m.envelope.kind == "test.ping"]
    sock.close()
    assert_still_serving(transports, inboxes)  # the peers' own links are untouched


def test_a_peer_kind_on_the_client_port_cuts_the_connection(pair):
    config, transports, inboxes = pair
    target = transports["n2"]
    target.register("peeronly", inboxes["n2"].put, port="peer")
    closed = target.closed_connections
    sock = raw_dealer(config.node("n2").client_address)
    sock.send(envelope(kind="peeronly.x", sender="client-1"))
    wait_until(lambda: target.closed_connections > closed, 10, "the connection cut")
    assert target.drop_counts()["unknown-kind"] >= 1
    sock.close()


def test_a_frame_beyond_the_socket_limit_closes_only_that_connection(pair):
    config, transports, inboxes = pair
    sock = raw_dealer(config.node("n2").address)
    sock.send(b"\x00" * (3 * LIMIT))
    wait_until(lambda: transports["n2"].closed_connections >= 1, 10, "the connection closed")
    sock.close()
    assert_still_serving(transports, inboxes)


# Random bytes fail ZeroMQ's handshake at once, unless they begin like a greeting (0xff, or 0x00
# for an old-style peer): ZeroMQ then waits for the rest, and the peer's close ends it.
NOT_A_GREETING = bytes([0x5A]) + random.Random(1).randbytes(299)
GREETING_START = bytes([0xFF]) + bytes(8) + bytes([0x7E]) + random.Random(2).randbytes(290)


@pytest.mark.parametrize("endpoint", ["address", "client_address"])
@pytest.mark.parametrize("payload", [NOT_A_GREETING, b"GET / HTTP/1.1\r\n\r\n", b"\xff"])
def test_garbage_from_raw_tcp_is_counted_and_harmless(pair, endpoint, payload):
    config, transports, inboxes = pair
    url = urlsplit(getattr(config.node("n2"), endpoint))
    before = transports["n2"].drop_counts().get("handshake-failed", 0)
    with socket.create_connection((url.hostname, url.port), timeout=5) as raw:
        raw.sendall(payload)
    wait_until(
        lambda: transports["n2"].drop_counts().get("handshake-failed", 0) > before,
        10,
        "a failed handshake counted",
    )
    assert_still_serving(transports, inboxes)


@pytest.mark.parametrize("endpoint", ["address", "client_address"])
@pytest.mark.parametrize("first_byte", [0xFF, 0x00])
def test_a_garbage_greeting_then_a_close_is_a_closed_connection_and_harmless(
    pair, endpoint, first_byte
):
    config, transports, inboxes = pair
    url = urlsplit(getattr(config.node("n2"), endpoint))
    before = transports["n2"].closed_connections
    with socket.create_connection((url.hostname, url.port), timeout=5) as raw:
        raw.sendall(bytes([first_byte]) + GREETING_START[1:])
    wait_until(
        lambda: transports["n2"].closed_connections > before, 10, "the connection counted closed"
    )
    assert_still_serving(transports, inboxes)


def assert_still_serving(transports, inboxes):
    """n2 still takes n1's messages (sent until one arrives: n1 drops them while unconnected)."""

    def delivered():
        transports["n1"].send("n2", "test.after", {"ok": True})
        try:
            return inboxes["n2"].get(timeout=0.2).envelope.kind == "test.after"
        except queue.Empty:
            return False

    wait_until(delivered, 10, "n2 to take a message from n1")


def test_client_requests_carry_a_route_and_get_their_reply(pair):
    config, transports, inboxes = pair
    client = raw_dealer(config.node("n1").client_address)
    codec = Codec(cluster="test", sender="c1")
    client.send(codec.encode("client.hello", {"x": 1}, request_id=99))
    inbound: Inbound = inboxes["n1"].get(timeout=10)
    assert isinstance(inbound.route, ClientRoute) and inbound.route.request_id == 99
    transports["n1"].reply(inbound.route, "client.hello.ok", {"y": 2})
    assert client.poll(10_000)
    answer = codec.decode(client.recv())
    assert (answer.kind, answer.request_id, answer.body) == ("client.hello.ok", 99, {"y": 2})
    client.close()


def wait_linked(transports):
    """Until each side has heard the other and got a frame out (earlier sends are dropped)."""

    def linked(a, b):
        stats = transports[a].peer_stats()[b]
        return stats.connected and stats.hearing and stats.msgs_out > 0

    wait_until(lambda: linked("n1", "n2") and linked("n2", "n1"), 10, "both links up")


def test_a_burst_larger_than_one_drain_batch_is_delivered_whole_and_in_order(pair):
    _, transports, inboxes = pair
    wait_linked(transports)
    drops_before = transports["n1"].peer_stats()["n2"].drops_out  # heartbeats before the link
    for n in range(1000):
        transports["n1"].send("n2", "test.burst", {"n": n})
    got = [inboxes["n2"].get(timeout=10).envelope.body["n"] for _ in range(1000)]
    assert got == list(range(1000))
    assert transports["n1"].peer_stats()["n2"].drops_out == drops_before


def test_handlers_on_the_io_thread_reply_inline_to_every_client_request(tmp_path):
    config = load_topology(write_topology(tmp_path, 2))
    server = Transport(config, "n1")
    server.register("client", lambda inbound: server.reply(inbound.route, "client.ok", {}))
    server.start()
    client = raw_dealer(config.node("n1").client_address)
    codec = Codec(cluster="test", sender="c1")
    try:
        for request_id in range(1, 301):  # more than one drain batch, answered while it drains
            client.send(codec.encode("client.ping", {}, request_id=request_id))
        answers = []
        for _ in range(300):
            assert client.poll(10_000)
            answers.append(codec.decode(client.recv()).request_id)
        assert sorted(answers) == list(range(1, 301))
    finally:
        client.close()
        server.stop()


def test_a_batched_handler_gets_peer_and_client_messages_in_batches_in_order(tmp_path):
    """Prefixes registered with one batched handler share its batches; nothing is lost."""
    config = load_topology(write_topology(tmp_path, 2))
    batches = queue.SimpleQueue()
    receiver, sender = Transport(config, "n1"), Transport(config, "n2")
    receiver.register("test", batches.put, batched=True)
    receiver.register("client", batches.put, batched=True)
    transports = {"n1": receiver, "n2": sender}
    for transport in transports.values():
        transport.start()
    client = raw_dealer(config.node("n1").client_address)
    codec = Codec(cluster="test", sender="c1")
    try:
        wait_linked(transports)
        for n in range(600):  # more than one drain batch of each router
            sender.send("n1", "test.burst", {"n": n})
            client.send(codec.encode("client.burst", {"n": n}, request_id=n + 1))
        peer_got, client_got, sizes = [], [], []
        while len(peer_got) < 600 or len(client_got) < 600:
            batch = batches.get(timeout=10)
            assert isinstance(batch, InboundBatch) and batch.messages
            sizes.append(len(batch.messages))
            for inbound in batch.messages:
                if inbound.route is None:
                    peer_got.append(inbound.envelope.body["n"])
                else:
                    assert inbound.route.request_id == inbound.envelope.body["n"] + 1
                    client_got.append(inbound.envelope.body["n"])
        assert peer_got == list(range(600)) and client_got == list(range(600))
        assert len(sizes) < 900  # batching happened: far fewer deliveries than messages
    finally:
        client.close()
        for transport in transports.values():
            transport.stop()


def test_replies_from_another_thread_never_strand_waiting_requests(tmp_path):
    """A reply sent off the I/O thread can swallow the ZMQ_FD signal of a request that came in
    meanwhile; the transport must still read that request. Thousands of pipelined round trips,
    every one answered from a worker thread, none stuck."""
    config = load_topology(write_topology(tmp_path, 2))
    server = Transport(config, "n1")
    requests: queue.SimpleQueue = queue.SimpleQueue()
    server.register("client", requests.put)
    server.start()

    def answer() -> None:
        while (inbound := requests.get()) is not None:
            server.reply(inbound.route, "client.ok", {})

    worker = threading.Thread(target=answer)
    worker.start()
    client = raw_dealer(config.node("n1").client_address)
    codec = Codec(cluster="test", sender="c1")
    total, window, sent, answered = 5000, 32, 0, 0
    try:
        while answered < total:
            while sent < total and sent - answered < window:
                sent += 1
                client.send(codec.encode("client.ping", {}, request_id=sent))
            assert client.poll(10_000), f"stuck after {answered} answers"
            codec.decode(client.recv())
            answered += 1
    finally:
        requests.put(None)
        worker.join(timeout=10)
        client.close()
        server.stop()


def test_nodes_stopping_at_the_same_moment_both_stop(tmp_path):
    """A peer's disconnect during stop() raises monitor events; they must not wedge the stop."""
    for attempt in range(5):
        folder = tmp_path / str(attempt)  # fresh ports: ZeroMQ releases closed ones in its own time
        folder.mkdir()
        config = load_topology(write_topology(folder, 2))
        transports = {node_id: Transport(config, node_id) for node_id in ("n1", "n2")}
        for transport in transports.values():
            transport.start()
        wait_linked(transports)
        stoppers = [threading.Thread(target=t.stop) for t in transports.values()]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join(timeout=10)
        assert not any(stopper.is_alive() for stopper in stoppers)
        assert not any(transport._thread.is_alive() for transport in transports.values())


def test_a_peer_added_at_run_time_is_reached_and_heard(tmp_path):
    """n3 is in neither n1's topology nor its peers: what n3 sends first is dropped (an unknown
    sender, its connection cut); once n1 adds it (its address came with the membership), both
    ways work, over the same link n3 had."""
    every = load_topology(write_topology(tmp_path, 3))
    ones = dataclasses.replace(every, nodes=every.nodes[:2])
    first, newcomer = Transport(ones, "n1"), Transport(every, "n3")
    inboxes = {"n1": queue.SimpleQueue(), "n3": queue.SimpleQueue()}
    first.register("test", inboxes["n1"].put)
    newcomer.register("test", inboxes["n3"].put)
    first.start()
    newcomer.start()
    try:
        wait_until(lambda: newcomer.peer_stats()["n1"].connected, 10, "n3 connected to n1")
        newcomer.send("n1", "test.early", {})
        wait_until(lambda: first.drop_counts().get("unknown-sender"), 10, "n3's frame dropped")
        assert first.send("n3", "test.hello", {}) is False  # n1 cannot reach it yet
        assert first.add_peer("n3", every.node("n3").address) is True
        assert first.add_peer("n3", every.node("n3").address) is False  # known already
        wait_until(lambda: "n3" in first.peer_stats(), 10, "n1 connecting to n3")
        wait_until(lambda: first.send("n3", "test.hello", {}), 10, "n1 sending to n3")
        assert inboxes["n3"].get(timeout=10).envelope.kind == "test.hello"

        def heard_from_n3() -> bool:
            newcomer.send("n1", "test.later", {})
            try:
                return inboxes["n1"].get(timeout=0.2).envelope.kind == "test.later"
            except queue.Empty:
                return False

        wait_until(heard_from_n3, 20, "n1 hearing n3 after adding it")
    finally:
        first.stop()
        newcomer.stop()
