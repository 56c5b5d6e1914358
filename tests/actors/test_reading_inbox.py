"""A transport read by an actor's own thread (`attach_reader` / `read`), the I/O thread standing
in while that reader is busy, and the `ReadingInbox` that sleeps on the sockets and its queue."""

import queue
import threading
import time

import pytest

from actors.reading_inbox import ReadingInbox
from actors.transport import READER_STANDIN_MS, InboundBatch, Transport
from caddy.config import load_topology
from tests.harness import wait_until, write_topology


@pytest.fixture
def pair(tmp_path):
    """Transports n1 and n2; n2 sends `mine.*` to a batched handler, `other.*` to a queue."""
    config = load_topology(write_topology(tmp_path, 2))
    mine, other = queue.SimpleQueue(), queue.SimpleQueue()
    transports = {node_id: Transport(config, node_id) for node_id in ("n1", "n2")}
    transports["n2"].register("mine", mine.put, batched=True)
    transports["n2"].register("other", other.put)
    for transport in transports.values():
        transport.start()
    yield transports["n1"], transports["n2"], mine, other
    for transport in transports.values():
        transport.stop()


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
    started = time.monotonic()
    send_until(n1, "mine.a", lambda: not mine.empty(), "the stand-in to deliver mine.a")
    assert time.monotonic() - started >= READER_STANDIN_MS / 1000
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
