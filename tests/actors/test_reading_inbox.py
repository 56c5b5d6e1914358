"""A transport read by an actor's own thread (`attach_reader` / `read`), the I/O thread standing
in while that reader is busy, and the `ReadingInbox` that sleeps on the sockets and its queue."""

import queue
import threading

import pytest

from actors.reading_inbox import ReadingInbox
from actors.transport import InboundBatch, Transport
from caddy.config import load_topology
from tests.harness import wait_until, write_topology


def started_pair(tmp_path, mine):
    """Transports n1 and n2, started; n2 sends `mine.*` to `mine` (batched), `other.*` to a
    queue, which is returned with them."""
    config = load_topology(write_topology(tmp_path, 2))
    other = queue.SimpleQueue()
    transports = {node_id: Transport(config, node_id) for node_id in ("n1", "n2")}
    transports["n2"].register("mine", mine, batched=True)
    transports["n2"].register("other", other.put)
    for transport in transports.values():
        transport.start()
    return transports["n1"], transports["n2"], other


@pytest.fixture
def pair(tmp_path):
    """n1 and n2; n2's `mine.*` handler puts into a queue."""
    mine = queue.SimpleQueue()
    n1, n2, other = started_pair(tmp_path, mine.put)
    yield n1, n2, mine, other
    n1.stop()
    n2.stop()


def send_until(sender, kind, arrived, what):
    """n1 drops messages while it is not connected yet: send until one arrives."""

    def sent_and_arrived():
        sender.send("n2", kind, {"n": 1})
        return arrived()

    wait_until(sent_and_arrived, 10, what)


def read(transport, into):
    """One read by a reader that then waits (here: until the test polls again)."""
    into.extend(transport.read())
    transport.reader_waits()
    return into


def test_the_reader_gets_its_messages_from_read_and_the_others_go_to_their_handlers(pair):
    n1, n2, mine, other = pair
    n2.attach_reader(mine.put, lambda: None)
    got = []
    send_until(n1, "mine.a", lambda: bool(read(n2, got)), "a read of mine.a")
    assert {inbound.envelope.kind for inbound in got} == {"mine.a"}
    send_until(n1, "other.b", lambda: read(n2, got) and not other.empty(), "other.b delivered")
    assert other.get().envelope.kind == "other.b"
    assert {inbound.envelope.kind for inbound in got} == {"mine.a"}
    assert mine.empty()  # nothing went around the reader


def test_the_io_thread_stands_in_for_a_reader_busy_too_long(pair):
    n1, n2, mine, _ = pair
    n2.attach_reader(mine.put, lambda: None)  # and never reads: busy
    send_until(n1, "mine.a", lambda: not mine.empty(), "the stand-in to deliver mine.a")
    assert isinstance(mine.get(), InboundBatch)


def test_after_detach_the_io_thread_reads_again(pair):
    n1, n2, mine, _ = pair
    n2.attach_reader(mine.put, lambda: None)
    n2.reader_waits()  # a waiting reader: no stand-in
    n2.detach_reader()
    send_until(n1, "mine.a", lambda: not mine.empty(), "the I/O thread to deliver mine.a")


def test_a_reading_inbox_wakes_for_the_sockets_and_for_its_queue(pair):
    n1, n2, mine, _ = pair
    inbox = ReadingInbox()
    taken = queue.SimpleQueue()
    attached = threading.Event()

    def actor_thread():
        inbox.read_from(n2, mine.put)
        attached.set()
        while (item := inbox.get()) != "stop":
            taken.put(item)
        inbox.stop_reading()

    thread = threading.Thread(target=actor_thread, daemon=True)
    thread.start()
    attached.wait(10)
    send_until(n1, "mine.a", lambda: not taken.empty(), "the inbox to read mine.a")
    delivery = taken.get()
    assert isinstance(delivery.message, InboundBatch) and delivery.reply_to is None
    assert delivery.message.messages[0].envelope.kind == "mine.a"
    wait_until(lambda: inbox._sleeping, 10, "the inbox to sleep on its sockets")
    inbox.put("told")
    while isinstance(item := taken.get(timeout=10), type(delivery)):  # more mine.a, sent twice
        assert item.message.messages[0].envelope.kind == "mine.a"
    assert item == "told"
    inbox.put("stop")
    thread.join(10)
    assert not thread.is_alive()
    send_until(n1, "mine.b", lambda: not mine.empty(), "the I/O thread to read again")


def test_a_transport_stopped_under_its_reader_leaves_a_plain_queue(tmp_path):
    config = load_topology(write_topology(tmp_path, 1))
    transport = Transport(config, "n1")
    transport.register("mine", lambda message: None, batched=True)
    transport.start()
    inbox = ReadingInbox()
    inbox.read_from(transport, transport._handlers["mine"])
    transport.stop()
    taken = queue.SimpleQueue()
    thread = threading.Thread(target=lambda: taken.put(inbox.get()), daemon=True)
    thread.start()  # it finds the sockets closed and waits on its queue alone
    wait_until(lambda: inbox._transport is None, 10, "the inbox to stop reading")
    inbox.put("told")
    assert taken.get(timeout=10) == "told"
    assert transport.read() is None


def test_a_flood_for_other_actors_reaches_them_while_the_reader_sleeps(pair):
    """More than one drain's worth of messages for other handlers and none for the reader: the
    reader must drain them all before it sleeps (the ZMQ_FD fires only for new input)."""
    n1, n2, mine, other = pair
    inbox = ReadingInbox()
    attached = threading.Event()

    def actor_thread():
        inbox.read_from(n2, mine.put)
        attached.set()
        while inbox.get() != "stop":
            pass
        inbox.stop_reading()

    thread = threading.Thread(target=actor_thread, daemon=True)
    thread.start()
    attached.wait(10)
    send_until(n1, "other.first", lambda: not other.empty(), "n1 connected")
    for n in range(1000):
        n1.send("n2", "other.flood", {"n": n})
    arrived = []

    def all_arrived():
        while not other.empty():
            arrived.append(other.get())
        return sum(m.envelope.kind == "other.flood" for m in arrived) == 1000

    wait_until(all_arrived, 10, "every flood message delivered")
    inbox.put("stop")
    thread.join(10)


@pytest.fixture
def told_pair(tmp_path):
    """n1 and n2; n2's `mine.*` handler tells a ReadingInbox, as the Raft actor's does."""
    inbox = ReadingInbox()
    n1, n2, other = started_pair(tmp_path, inbox.put)
    yield n1, n2, inbox, other
    n1.stop()
    n2.stop()


def kinds_and_ns(item):
    """(source, [n...]) for an item taken from the inbox."""
    message = getattr(item, "message", item)  # _Delivery from read(), or a told InboundBatch
    source = "read" if hasattr(item, "message") else "told"
    return source, [inbound.envelope.body["n"] for inbound in message.messages]


def connected(n1, other):
    def sent_and_arrived():
        n1.send("n2", "other.hello", {"n": -1})
        return not other.empty()

    wait_until(sent_and_arrived, 10, "n1 connected")
    while not other.empty():
        other.get()


def test_the_stand_in_answers_gossip_while_the_reader_handles_a_told_message(told_pair):
    """Woken by a told message (a Tick, a proxy call) the reader stays busy with it (a slow
    fsync): the stand-in answers gossip meanwhile."""
    n1, n2, inbox, other = told_pair
    attached, release = threading.Event(), threading.Event()
    gossip_seen_while_busy = []

    def actor_thread():
        inbox.read_from(n2, inbox.put)
        attached.set()
        while (item := inbox.get()) != "stop":
            if item == "long":  # e.g. a Tick whose Ready needs a slow fsync
                try:
                    gossip_seen_while_busy.append(other.get(timeout=2.0))
                except queue.Empty:
                    pass
                release.set()
        inbox.stop_reading()

    thread = threading.Thread(target=actor_thread, daemon=True)
    thread.start()
    attached.wait(10)
    connected(n1, other)
    wait_until(lambda: inbox._sleeping and n2._reader_busy_since is None, 10, "reader asleep")
    inbox.put("long")
    n1.send("n2", "other.ping", {"n": 1})
    release.wait(10)
    inbox.put("stop")
    thread.join(10)
    assert gossip_seen_while_busy, "the ping waited the whole 2 s busy period: no stand-in"


def test_a_stand_in_and_the_reader_keep_one_peers_messages_in_order(told_pair):
    """The stand-in has taken mine.1 and is still draining (its batch is told at the end) when
    the reader finishes its work: the reader must not read and handle mine.2, mine.3 first."""
    n1, n2, inbox, other = told_pair
    connected(n1, other)
    attached, go = threading.Event(), threading.Event()
    standin_has_one, reader_read = threading.Event(), threading.Event()
    order = []
    original = n2._on_frame

    def on_frame(identity, frame, from_client, batches):
        original(identity, frame, from_client, batches)
        if threading.get_ident() == n2._io_thread_id and not standin_has_one.is_set():
            standin_has_one.set()  # the stand-in holds mine.1 in its local batch...
            reader_read.wait(5)  # ...while it decodes (here: until the reader has read)

    n2._on_frame = on_frame

    def actor_thread():
        inbox.read_from(n2, inbox.put)
        attached.set()
        while (item := inbox.get()) != "stop":
            source, ns = kinds_and_ns(item)
            order.append((source, ns))
            if ns == [0]:
                go.wait(10)  # busy (a long fsync): the I/O thread stands in after 20 ms
            elif source == "read":
                reader_read.set()
        inbox.stop_reading()

    thread = threading.Thread(target=actor_thread, daemon=True)
    thread.start()
    attached.wait(10)
    n1.send("n2", "mine.x", {"n": 0})
    wait_until(lambda: [ns for _, ns in order] == [[0]], 10, "the reader busy with mine 0")
    for n in (1, 2, 3):
        n1.send("n2", "mine.x", {"n": n})
    assert standin_has_one.wait(10)
    go.set()  # the reader finishes its fsync and reads
    wait_until(lambda: sum(len(ns) for _, ns in order) == 4, 10, "all four handled")
    inbox.put("stop")
    thread.join(10)
    handled = [n for _, ns in order for n in ns]
    assert handled == [0, 1, 2, 3], f"handled out of order: {order}"
