"""Publishes every event of the node on a ZeroMQ PUB socket (the node's `events_address`), for
scripts and dashboards that want them pushed: two frames, the kind and the event as JSON, so a
subscriber filters by kind prefix (`sub.subscribe(b"leader.")`)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pykka
import zmq

from caddy.events import NodeEvent

log = logging.getLogger(__name__)

SEND_HWM = 10_000  # events queued per slow subscriber before PUB drops them for it


class EventPublisherActor(pykka.ThreadingActor):
    """Told each event (subscribed to every kind); owns its PUB socket on its own thread."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self._address = address
        self._socket: zmq.Socket | None = None

    def on_start(self) -> None:
        if not self._address:
            return
        socket = zmq.Context.instance().socket(zmq.PUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        socket.bind(self._address)
        self._socket = socket

    def on_receive(self, message: Any) -> None:
        if isinstance(message, NodeEvent) and self._socket is not None:
            body = json.dumps(message.to_dict()).encode()
            self._socket.send_multipart([message.kind.encode(), body], zmq.NOBLOCK)

    def on_stop(self) -> None:
        if self._socket is not None:
            self._socket.close()
