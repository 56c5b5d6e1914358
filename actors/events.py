"""`EventBus`: one node's in-process event bus; subsystems publish, actors and callbacks watch.

Delivery is always a pykka `tell`: a publisher (often the Raft thread) never blocks on, and never
runs the code of, a subscriber. A plain callback gets a small actor of its own, so a slow or
failing callback only delays or logs itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import pykka

from caddy.events import KindFilter, Kinds, NodeEvent

log = logging.getLogger(__name__)

E = TypeVar("E", bound=NodeEvent)
RECENT_EVENTS = 1024  # kept for `recent`: what a watcher polling every 0.1 s cannot miss
Callback = Callable[[NodeEvent], object]


class _CallbackActor(pykka.ThreadingActor):
    """Calls one user callback per event; its failures are logged, never raised."""

    # A callback stuck forever must not keep the node process from exiting.
    use_daemon_thread = True

    def __init__(self, node_id: str, callback: Callback, active: threading.Event) -> None:
        super().__init__()
        self._node_id = node_id
        self._callback = callback
        self._active = active

    def on_receive(self, message: Any) -> None:
        if not self._active.is_set():
            return  # cancelled: drop what was queued before
        try:
            self._callback(message)
        except (Exception, SystemExit):  # pykka stops every actor on a SystemExit
            log.exception(
                "node %s: event callback %r failed on %s #%d",
                self._node_id,
                self._callback,
                message.kind,
                message.seq,
            )


class Subscription:
    """One subscriber of an `EventBus`; `cancel()` ends its deliveries."""

    __slots__ = ("_active", "_bus", "_filter", "_owned", "_target")

    def __init__(
        self,
        bus: EventBus,
        target: pykka.ActorRef[Any],
        kind_filter: KindFilter,
        owned: bool,
        active: threading.Event,
    ) -> None:
        self._bus = bus
        self._target = target
        self._filter = kind_filter
        self._owned = owned  # the target is a callback actor the bus started
        self._active = active

    @property
    def active(self) -> bool:
        return self._active.is_set()

    def cancel(self) -> None:
        """Deliver nothing more; a callback's actor stops (without waiting for a running call).

        An actor target may still find events told before the cancel in its mailbox.
        """
        self._active.clear()
        self._bus._remove(self)
        if self._owned:
            self._target.stop(block=False)


class EventBus:
    """Stamps and delivers one node's events; safe to use from any thread."""

    def __init__(self, node_id: str, clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self._clock = clock
        # One lock over stamping and telling: each subscriber gets events in `seq` order. A tell
        # only enqueues, so holding the lock for it is cheap.
        self._lock = threading.Lock()
        self._seq = 0
        self._subscriptions: list[Subscription] = []
        self._closed = False
        self._recent: deque[NodeEvent] = deque(maxlen=RECENT_EVENTS)

    def publish(self, event_type: type[E], /, **fields: Any) -> E:
        """Build `event_type(**fields)` stamped with this node, the next `seq` and the time, and
        tell it to every matching subscriber. After `close()` it is built but not delivered."""
        with self._lock:
            self._seq += 1
            event = event_type(node=self.node_id, seq=self._seq, time=self._clock(), **fields)
            self._recent.append(event)
            dead = []
            for subscription in self._subscriptions:
                if subscription._filter.matches(event.kind):
                    try:
                        subscription._target.tell(event)
                    except pykka.ActorDeadError:
                        dead.append(subscription)
            for subscription in dead:
                subscription._active.clear()
                self._subscriptions.remove(subscription)
        return event

    def subscribe(
        self, target: pykka.ActorRef[Any] | Callback, kinds: Kinds = None
    ) -> Subscription:
        """Deliver matching events to `target`: an actor is told each event, a callable is called
        with it on an actor of its own. `kinds` as `KindFilter.of` takes (ValueError on a typo).
        After `close()` the subscription is inert."""
        kind_filter = KindFilter.of(kinds)
        if isinstance(target, pykka.ActorRef):
            subscription = Subscription(self, target, kind_filter, False, threading.Event())
        elif callable(target):
            active = threading.Event()
            actor = _CallbackActor.start(self.node_id, target, active)
            subscription = Subscription(self, actor, kind_filter, True, active)
        else:
            raise TypeError(f"subscribe wants an ActorRef or a callable, not {target!r}")
        with self._lock:
            if not self._closed:
                subscription._active.set()
                self._subscriptions.append(subscription)
        if not subscription.active and subscription._owned:
            subscription._target.stop(block=False)
        return subscription

    @property
    def last_seq(self) -> int:
        """The seq of the latest event published (0 before the first)."""
        with self._lock:
            return self._seq

    def recent(self, after_seq: int = 0) -> list[NodeEvent]:
        """The last RECENT_EVENTS events published, those after `after_seq` only (for
        `caddy-ctl watch`, which asks each node for what it has not seen yet)."""
        with self._lock:
            return [event for event in self._recent if event.seq > after_seq]

    def close(self) -> None:
        """Deliver nothing more and stop every callback actor this bus started."""
        with self._lock:
            self._closed = True
            subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.cancel()

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
