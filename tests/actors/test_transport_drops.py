"""Hostile frames at a live transport: dropped without harm, counted by reason and by known peer
(clients and unknown senders by reason only), and logged at most once per peer, reason and
interval, however many arrive and whatever names they forge."""

import logging
import queue

import msgpack
import pytest
import zmq

from actors.status_board import StatusBoard
from actors.transport import Transport, link_routing_id, transport_status
from caddy.config import load_topology
from caddy.wire import PROTOCOL_VERSION, Codec
from tests.harness import wait_until, write_topology


def deep(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"  # a list in a list ... 1,000 deep in ~1 KB


def envelope_with(position: int, raw: bytes, sender: str = "n1") -> bytes:
    fields = [msgpack.packb(f) for f in [PROTOCOL_VERSION, "test", sender, "test.x", 0, 0, {}]]
    fields[position] = raw
    return b"\x97" + b"".join(fields)


@pytest.fixture
def node(tmp_path, caplog):
    """n2's transport running alone (n1 is a name in the topology that we impersonate)."""
    caplog.set_level(logging.INFO, logger="actors.transport")
    config = load_topology(write_topology(tmp_path, 2))
    transport = Transport(config, "n2")
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    transport.register("test", inbox.put)
    transport.start()
    sockets = []

    def dealer(endpoint: str, identity: bytes | None = None) -> zmq.Socket:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            sock.setsockopt(zmq.ROUTING_ID, identity)
        sock.connect(getattr(config.node("n2"), endpoint))
        sockets.append(sock)
        return sock

    yield transport, inbox, dealer, caplog
    for sock in sockets:
        sock.close()
    transport.stop()


def drop_lines(caplog, reason):
    return [r.getMessage() for r in caplog.records if f"({reason})" in r.getMessage()]


def test_deep_envelope_fields_are_counted_by_peer_and_the_node_serves_on(node):
    transport, inbox, dealer, caplog = node
    # Each on a connection of its own, named like n1's links: a connection that sends a malformed
    # frame is cut (test_transport.py), and each of these must be decoded to be counted.
    for position in (0, 5):  # version, flags
        for _ in range(50):
            dealer("address", identity=link_routing_id("n1")).send(
                envelope_with(position, deep(1000))
            )
    wait_until(lambda: transport.drop_counts().get("malformed") == 100, 20, "100 drops")
    after = Codec("test", "n1").encode("test.after", {"ok": True})
    dealer("address", identity=link_routing_id("n1")).send(after)
    assert inbox.get(timeout=10).envelope.kind == "test.after"
    assert transport.drop_counts() == {"malformed": 100}
    assert transport.peer_drop_counts() == {"n1": {"malformed": 100}}
    status = transport_status(transport, StatusBoard())
    assert status["peers"]["n1"]["dropped_in"] == {"malformed": 100}
    assert status["dropped"] == {"malformed": 100}
    (line,) = drop_lines(caplog, "malformed")  # one line for 100 drops in the interval
    assert "from n1" in line and "unsupported protocol version (a list of 1 items)" in line


def test_clients_and_unnamed_connections_count_by_reason_only(node):
    transport, _, dealer, caplog = node
    dealer("client_address", identity=b"n1").send(envelope_with(0, deep(1000)))
    dealer("address").send(envelope_with(5, deep(1000)))
    dealer("address", identity=b"n77").send(b"\xc1")
    wait_until(lambda: transport.drop_counts().get("malformed") == 3, 10, "3 drops")
    assert transport.peer_drop_counts() == {}
    lines = drop_lines(caplog, "malformed")
    assert len(lines) == 1 and "from -" in lines[0]


def test_a_flood_of_forged_senders_grows_nothing(node):
    transport, inbox, dealer, caplog = node
    forged = 500  # a connection each: the first forged name cuts a connection
    for number in range(forged):
        flood = dealer("address", identity=link_routing_id("n1"))
        flood.send(Codec("test", f"forged-{number}").encode("test.x", {}))
    wait_until(lambda: transport.drop_counts().get("unknown-sender") == forged, 30, "the drops")
    dealer("address", identity=link_routing_id("n1")).send(
        Codec("test", "n1").encode("test.after", {})
    )
    assert inbox.get(timeout=20).envelope.kind == "test.after"
    assert transport.drop_counts() == {"unknown-sender": forged}
    # Attributed to the connections' name (a known peer), not to the forged ones.
    assert transport.peer_drop_counts() == {"n1": {"unknown-sender": forged}}
    assert len(drop_lines(caplog, "unknown-sender")) == 1
    assert len(transport._drop_log) <= 2
