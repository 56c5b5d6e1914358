"""The node event bus on real pykka actors: delivery by `tell` in `seq` order, callbacks on actors
of their own, kind filters, failing and slow callbacks, cancel, close and dead subscribers."""

import logging
import threading
from dataclasses import dataclass

import pykka
import pytest

from actors.events import EventBus, _CallbackActor
from actors.local_cluster import wait_until
from caddy.events import LeaderChanged, LeaderElected, LeaderLost, NodeStarting, SnapshotTaken

DEADLINE = 10.0
MARK = object()


class Recorder(pykka.ThreadingActor):
    """Keeps what it is told; `MARK` tells the test that everything told before it was handled."""

    def __init__(self, events: list, marked: threading.Event) -> None:
        super().__init__()
        self.events = events
        self.marked = marked

    def on_receive(self, message):
        if message is MARK:
            self.marked.set()
        else:
            self.events.append(message)


@dataclass
class Recorded:
    ref: pykka.ActorRef
    events: list
    marked: threading.Event

    def drained(self) -> list:
        """The events, once the recorder handled everything told to it so far."""
        self.marked.clear()
        self.ref.tell(MARK)
        wait_until(self.marked.is_set, DEADLINE, "the recorder to reach the mark")
        return self.events


def recorder() -> Recorded:
    events: list = []
    marked = threading.Event()
    return Recorded(Recorder.start(events, marked), events, marked)


@pytest.fixture(autouse=True)
def stop_actors():
    yield
    pykka.ActorRegistry.stop_all()


@pytest.fixture
def bus():
    bus = EventBus("n1")
    yield bus
    bus.close()


def callback_actors():
    return [ref for ref in pykka.ActorRegistry.get_by_class(_CallbackActor) if ref.is_alive()]


def test_an_actor_is_told_each_event_in_seq_order(bus):
    watcher = recorder()
    bus.subscribe(watcher.ref)
    published = [bus.publish(LeaderElected, term=term) for term in range(1, 6)]
    wait_until(lambda: len(watcher.events) == 5, DEADLINE, "five events")
    assert watcher.events == published
    assert [event.seq for event in published] == [1, 2, 3, 4, 5]
    assert all(event.node == "n1" for event in published)


def test_the_bus_stamps_the_clock_it_was_given():
    event = EventBus("n7", clock=lambda: 42.5).publish(NodeStarting)
    assert (event.node, event.seq, event.time, event.kind) == ("n7", 1, 42.5, "node.starting")


def test_a_callback_is_called_on_its_own_actor(bus):
    calls = []
    bus.subscribe(lambda event: calls.append((event, threading.current_thread())))
    event = bus.publish(LeaderChanged, term=2, leader="n2", state="follower")
    wait_until(lambda: calls, DEADLINE, "the callback")
    assert calls[0][0] is event
    assert calls[0][1] is not threading.current_thread()


def test_kinds_filter_by_name_class_and_prefix(bus):
    by_prefix, by_class, by_name = recorder(), recorder(), recorder()
    bus.subscribe(by_prefix.ref, kinds="leader.")
    bus.subscribe(by_class.ref, kinds=[SnapshotTaken])
    bus.subscribe(by_name.ref, kinds=["leader.lost", "node.starting"])
    bus.publish(NodeStarting)
    bus.publish(LeaderElected, term=1)
    bus.publish(SnapshotTaken, index=10, term=1)
    bus.publish(LeaderLost, term=2, leader=None)
    kinds = [[event.kind for event in each.drained()] for each in (by_prefix, by_class, by_name)]
    assert kinds == [
        ["leader.elected", "leader.lost"],
        ["snapshot.taken"],
        ["node.starting", "leader.lost"],
    ]


def test_an_unknown_kind_is_refused_before_any_actor_starts(bus):
    with pytest.raises(ValueError, match="leader.elcted"):
        bus.subscribe(print, kinds=["leader.elcted"])
    assert callback_actors() == []
    with pytest.raises(TypeError):
        bus.subscribe("not a subscriber")  # type: ignore[arg-type]


def test_a_failing_callback_is_logged_and_still_gets_later_events(bus, caplog):
    calls = []

    def flaky(event):
        calls.append(event.seq)
        if event.seq == 1:
            raise RuntimeError("user bug")

    caplog.set_level(logging.ERROR, logger="actors.events")
    bus.subscribe(flaky)
    bus.publish(LeaderElected, term=1)
    second = bus.publish(LeaderElected, term=1)
    assert second.seq == 2
    wait_until(lambda: calls == [1, 2], DEADLINE, "both events at the callback")
    (record,) = [r for r in caplog.records if r.name == "actors.events"]
    assert "n1" in record.getMessage()
    assert record.exc_info[0] is RuntimeError
    assert len(callback_actors()) == 1


def test_a_callback_raising_system_exit_stops_nothing(bus):
    calls = []

    def exits(event):
        calls.append(event.seq)
        raise SystemExit(1)

    watcher = recorder()
    bus.subscribe(watcher.ref)
    bus.subscribe(exits)
    bus.publish(NodeStarting)
    bus.publish(NodeStarting)
    wait_until(lambda: calls == [1, 2], DEADLINE, "both events at the callback")
    assert watcher.ref.is_alive()
    assert len(callback_actors()) == 1


def test_a_blocked_callback_blocks_neither_publish_nor_other_subscribers(bus):
    gate = threading.Event()
    order = []

    def slow(event):
        order.append(f"enter {event.seq}")
        gate.wait(DEADLINE)
        order.append(f"exit {event.seq}")

    watcher = recorder()
    bus.subscribe(slow)
    bus.subscribe(watcher.ref)
    bus.publish(NodeStarting)
    wait_until(lambda: order, DEADLINE, "the callback to be blocked")
    publisher = threading.Thread(target=bus.publish, args=(LeaderElected,), kwargs={"term": 1})
    publisher.start()
    publisher.join(DEADLINE)
    assert not publisher.is_alive(), "publish waited for a blocked callback"
    order.append("published 2")
    wait_until(lambda: len(watcher.events) == 2, DEADLINE, "the other subscriber's events")
    gate.set()
    wait_until(lambda: len(order) == 5, DEADLINE, "the callback to finish")
    assert order == ["enter 1", "published 2", "exit 1", "enter 2", "exit 2"]


def test_seq_strictly_increases_across_publishing_threads(bus):
    watcher = recorder()
    bus.subscribe(watcher.ref)
    threads, per_thread = 8, 50
    returned = []
    start = threading.Barrier(threads)

    def publish_many():
        start.wait(DEADLINE)
        for _ in range(per_thread):
            returned.append(bus.publish(LeaderElected, term=1).seq)

    workers = [threading.Thread(target=publish_many) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(DEADLINE)
    total = threads * per_thread
    assert sorted(returned) == list(range(1, total + 1))
    wait_until(lambda: len(watcher.events) == total, DEADLINE, "every event")
    assert [event.seq for event in watcher.events] == list(range(1, total + 1))


def test_cancel_stops_delivery_to_an_actor(bus):
    watcher = recorder()
    subscription = bus.subscribe(watcher.ref)
    bus.publish(NodeStarting)
    subscription.cancel()
    subscription.cancel()
    bus.publish(NodeStarting)
    assert not subscription.active
    assert [event.seq for event in watcher.drained()] == [1]
    assert watcher.ref.is_alive()


def test_cancel_stops_a_callback_and_drops_what_it_had_queued(bus):
    gate = threading.Event()
    calls = []

    def slow(event):
        calls.append(event.seq)
        gate.wait(DEADLINE)

    subscription = bus.subscribe(slow)
    bus.publish(NodeStarting)
    wait_until(lambda: calls, DEADLINE, "the callback to be blocked")
    bus.publish(NodeStarting)
    subscription.cancel()
    gate.set()
    wait_until(lambda: not callback_actors(), DEADLINE, "the callback actor to stop")
    assert calls == [1]


def test_a_callback_may_cancel_its_own_subscription(bus):
    calls = []
    subscriptions = []

    def once(event):
        calls.append(event.seq)
        subscriptions[0].cancel()

    subscriptions.append(bus.subscribe(once))
    bus.publish(NodeStarting)
    bus.publish(NodeStarting)
    wait_until(lambda: not callback_actors(), DEADLINE, "the callback actor to stop")
    assert calls == [1]


def test_close_stops_callback_actors_and_delivers_nothing_more():
    bus = EventBus("n1")
    watcher = recorder()
    bus.subscribe(watcher.ref)
    bus.subscribe(lambda event: None)
    bus.subscribe(lambda event: None, kinds="leader.")
    assert len(callback_actors()) == 2
    bus.close()
    wait_until(lambda: not callback_actors(), DEADLINE, "the callback actors to stop")
    assert bus.publish(NodeStarting).seq == 1
    assert watcher.drained() == []
    assert watcher.ref.is_alive(), "the bus stops only the actors it started"
    late = bus.subscribe(lambda event: None)
    assert not late.active
    wait_until(lambda: not callback_actors(), DEADLINE, "the late callback actor to stop")


def test_a_dead_subscriber_is_dropped_and_the_rest_still_delivered(bus):
    gone, live = recorder(), recorder()
    dead = bus.subscribe(gone.ref)
    bus.subscribe(live.ref)
    gone.ref.stop()
    bus.publish(NodeStarting)
    bus.publish(NodeStarting)
    assert not dead.active
    assert [event.seq for event in live.drained()] == [1, 2]
