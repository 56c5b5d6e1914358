"""Batch frames on the client endpoint: a client's `kv.batch` reaches the handlers as the
requests it carries, their answers leave together in `kv.replies`, and malformed batches only
cost their own bad items."""

import queue

import msgpack
import pytest
import zmq

from actors.transport import ClientRoute, Inbound, InboundBatch, Transport
from caddy.config import load_topology
from caddy.wire import BATCH_KIND, MAX_BATCH_ITEMS, PROTOCOL_VERSION, REPLIES_KIND, Codec
from tests.harness import write_topology

CODEC = Codec(cluster="test", sender="c1")


@pytest.fixture
def node(tmp_path):
    """A running transport n1 whose `kv.*` requests arrive in batches, and a client DEALER."""
    config = load_topology(write_topology(tmp_path, 2))
    transport = Transport(config, "n1")
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    transport.register("kv", inbox.put, batched=True)
    transport.start()
    client = zmq.Context.instance().socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(config.node("n1").client_address)
    yield transport, inbox, client
    client.close()
    transport.stop()


def take(inbox, count):
    """`count` inbound requests, from however many InboundBatches they came in."""
    got = []
    while len(got) < count:
        batch = inbox.get(timeout=10)
        assert isinstance(batch, InboundBatch)
        got.extend(batch.messages)
    assert len(got) == count
    return got


@pytest.fixture
def dealers():
    """A factory of client DEALERs connected to an address; all closed when the test ends."""
    opened = []

    def connect(address):
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        opened.append(sock)
        return sock

    yield connect
    for sock in opened:
        sock.close()


def answers(client, count):
    """The next `count` frames from the node, decoded."""
    frames = []
    for _ in range(count):
        assert client.poll(10_000), f"only {len(frames)} of {count} frames came"
        frames.append(CODEC.decode(client.recv()))
    return frames


def test_a_batch_arrives_as_its_requests_and_their_replies_return_together(node):
    transport, inbox, client = node
    requests = [[10 + n, "kv.put", {"key": f"k{n}", "value": n}] for n in range(5)]
    client.send(CODEC.encode_batch(BATCH_KIND, requests))
    client.send(CODEC.encode("kv.get", {"key": "alone"}, request_id=99))
    got = take(inbox, 6)
    batched = [inbound for inbound in got if inbound.route.batched]
    assert [(i.envelope.request_id, i.envelope.kind, i.envelope.body) for i in batched] == [
        tuple(request) for request in requests
    ]
    assert all(
        i.envelope.sender == "c1" and i.route.request_id == i.envelope.request_id for i in got
    )
    (alone,) = [inbound for inbound in got if not inbound.route.batched]
    assert alone.route == ClientRoute(alone.route.identity, 99)

    # the replies interleaved as a Raft actor would give them: the batched ones leave as one frame
    replies = [(i.route, "kv.ok", {"value": i.envelope.request_id}) for i in reversed(got)]
    transport.reply_many(replies)
    frames = answers(client, 2)
    (grouped,) = [frame for frame in frames if frame.kind == REPLIES_KIND]
    (plain,) = [frame for frame in frames if frame.kind != REPLIES_KIND]
    assert grouped.request_id == 0
    assert grouped.body["replies"] == [[n, "kv.ok", {"value": n}] for n in range(14, 9, -1)]
    assert (plain.kind, plain.request_id, plain.body) == ("kv.ok", 99, {"value": 99})
    assert not transport.drop_counts()


def test_a_single_batched_reply_goes_alone_and_many_are_split_at_the_bound(node):
    transport, inbox, client = node
    count = MAX_BATCH_ITEMS + 10
    for ids in (range(1, 201), range(201, count + 1)):  # two batches within the bound
        client.send(CODEC.encode_batch(BATCH_KIND, [[n, "kv.get", {"key": "k"}] for n in ids]))
    got = take(inbox, count)
    transport.reply(got[0].route, "kv.ok", {"value": "first"})
    (first,) = answers(client, 1)
    assert (first.kind, first.request_id, first.body) == ("kv.ok", 1, {"value": "first"})
    transport.reply_many([(i.route, "kv.ok", {}) for i in got[1:]])
    frames = answers(client, 2)
    assert [frame.kind for frame in frames] == [REPLIES_KIND] * 2
    sizes = [len(frame.body["replies"]) for frame in frames]
    assert sizes == [MAX_BATCH_ITEMS, len(got) - 1 - MAX_BATCH_ITEMS]
    ids = [item[0] for frame in frames for item in frame.body["replies"]]
    assert ids == [i.envelope.request_id for i in got[1:]]


def test_an_unencodable_reply_in_a_group_costs_only_itself(node):
    transport, inbox, client = node
    client.send(CODEC.encode_batch(BATCH_KIND, [[n, "kv.get", {}] for n in (1, 2, 3)]))
    got = take(inbox, 3)
    bodies = [{"value": "a"}, {"value": {1, 2}}, {"value": "c"}]  # a set is no msgpack value
    transport.reply_many([(i.route, "kv.ok", body) for i, body in zip(got, bodies, strict=True)])
    frames = answers(client, 2)
    assert [(frame.request_id, frame.body) for frame in frames] == [
        (1, {"value": "a"}),
        (3, {"value": "c"}),
    ]
    assert transport.drop_counts() == {"reply-unencodable": 1}


def raw_batch(requests, kind=BATCH_KIND, field="requests"):
    return msgpack.packb([PROTOCOL_VERSION, "test", "c1", kind, 0, 0, {field: requests}])


def test_malformed_batches_and_items_are_counted_and_the_good_items_still_arrive(node, dealers):
    transport, inbox, client = node
    good = [7, "kv.get", {"key": "g"}]
    bad_items = [
        "not a list",
        [1, "kv.get"],  # wrong arity
        [1, "kv.get", {}, 4],
        ["1", "kv.get", {}],  # id not an int
        [-1, "kv.get", {}],
        [True, "kv.get", {}],
        [1, 5, {}],  # kind not a string
        [1, "", {}],
        [1, "kv.get", [1, 2]],  # body not a map
        [1, BATCH_KIND, {"requests": [good]}],  # nested
        [1, REPLIES_KIND, {"replies": []}],
    ]
    # A connection that sends a malformed batch is cut (see test_transport.py), so each frame
    # goes on a connection of its own, and the next waits for what the last delivered.
    address = client.getsockopt_string(zmq.LAST_ENDPOINT)
    dealers(address).send(raw_batch([bad_items[0], good, *bad_items[1:]]))
    got = take(inbox, 1)
    dealers(address).send(raw_batch({"not": "a list"}))
    dealers(address).send(raw_batch(None, field="other"))
    dealers(address).send(raw_batch([[n, "kv.get", {}] for n in range(MAX_BATCH_ITEMS + 3)]))
    got += take(inbox, MAX_BATCH_ITEMS)
    dealers(address).send(CODEC.encode("kv.get", {"key": "after"}, request_id=8))
    got += take(inbox, 1)
    assert got[0].envelope.body == {"key": "g"} and got[0].envelope.request_id == 7
    assert [i.envelope.request_id for i in got[1:-1]] == list(range(MAX_BATCH_ITEMS))
    assert got[-1].envelope.body == {"key": "after"} and not got[-1].route.batched
    assert transport.drop_counts() == {
        "batch-item-malformed": 9,
        "batch-nested": 2,
        "batch-malformed": 2,
        "batch-too-long": 3,
    }
    assert inbox.empty()


def test_a_batch_to_an_unbatched_handler_arrives_one_inbound_each(tmp_path):
    config = load_topology(write_topology(tmp_path, 2))
    transport = Transport(config, "n1")
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    transport.register("client", inbox.put)
    transport.start()
    client = zmq.Context.instance().socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(config.node("n1").client_address)
    try:
        client.send(CODEC.encode_batch(BATCH_KIND, [[1, "client.a", {}], [2, "client.b", {}]]))
        got = [inbox.get(timeout=10) for _ in range(2)]
        assert all(isinstance(inbound, Inbound) and inbound.route.batched for inbound in got)
        assert [inbound.envelope.kind for inbound in got] == ["client.a", "client.b"]
    finally:
        client.close()
        transport.stop()
