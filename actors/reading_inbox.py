"""An actor inbox that also waits on the node's sockets, so the actor reads its own messages.

A thread hand-over costs a wake-up of tens of microseconds here; a message read by the thread that
handles it saves one per message (three per replicated write).
"""

from __future__ import annotations

import os
import queue
import select
import threading
from dataclasses import dataclass
from typing import Any

from actors.transport import InboundBatch, Transport


@dataclass(slots=True)
class _Delivery:
    """What pykka's actor loop takes from an inbox: a message and no one to answer."""

    message: Any
    reply_to: None = None


@dataclass(frozen=True, slots=True)
class ReadFailed:
    """Delivered when reading the sockets raised: the actor should raise `error` in
    `on_receive`, so that pykka's failure handling runs (an exception from the inbox itself
    would end the actor's thread without it)."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class ReadRouters:
    """Tell an actor with a `ReadingInbox`, once the transport runs, to read the routers on its
    own thread; `handler` is what its prefixes are registered with."""

    handler: Any


class ReadingInbox(queue.Queue):
    """pykka's inbox (a Queue) for an actor that, once `read_from(transport)` ran on its thread,
    reads the transport's routers whenever its queue is empty: the messages for it come back as
    one `InboundBatch`, and it sleeps on the routers' FDs and an eventfd that `put` signals."""

    def __init__(self) -> None:
        super().__init__()
        self._transport: Transport | None = None
        self._wake_fd = -1  # an eventfd while reading
        self._wake_lock = threading.Lock()  # no wake() writes to a closed (reused) descriptor
        self._poll = select.poll()  # the eventfd and the routers' FDs, once reading
        self._sleeping = False

    def read_from(self, transport: Transport, handler: Any) -> None:
        """Take over reading `transport`'s routers for `handler` (call on the actor's thread);
        nothing happens if the transport is not running."""
        with self._wake_lock:
            self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        fds = transport.attach_reader(handler, self.wake)
        if fds is None:
            self._close_wake_fd()
            return
        for fd in (self._wake_fd, *fds):
            self._poll.register(fd, select.POLLIN)
        self._transport = transport

    def stop_reading(self) -> None:
        """Hand reading back to the transport's I/O thread; a plain queue from now on."""
        if self._transport is None:
            return
        self._transport.detach_reader()
        self._transport = None
        self._close_wake_fd()

    def _close_wake_fd(self) -> None:
        with self._wake_lock:
            if self._wake_fd >= 0:
                os.close(self._wake_fd)
                self._wake_fd = -1

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        if self._sleeping:
            self.wake()

    def wake(self) -> None:
        with self._wake_lock:
            if self._wake_fd >= 0:
                os.eventfd_write(self._wake_fd, 1)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        transport = self._transport
        if transport is None or not block or timeout is not None:
            return super().get(block, timeout)
        while True:
            # Under the drain lock a stand-in's batch (older than what the routers hold now) is
            # already in the queue, and told messages go first.
            with transport.drain_lock:
                try:
                    return super().get(block=False)
                except queue.Empty:
                    pass
                try:
                    inbound = transport.read()
                except Exception as error:  # let the actor fail the way pykka knows
                    self.stop_reading()
                    return _Delivery(ReadFailed(error))
            if inbound is None:  # the transport stopped before this actor
                self.stop_reading()
                return super().get()
            if inbound:
                return _Delivery(InboundBatch(inbound))
            self._sleeping = True
            if not self.empty():  # a put() that came before the flag: it did not wake us
                self._sleeping = False
                continue
            transport.reader_waits()
            self._poll.poll()
            transport.reader_wakes()
            self._sleeping = False
            try:
                os.eventfd_read(self._wake_fd)
            except OSError:  # nothing to read, or reading stopped and the eventfd is closed
                pass
