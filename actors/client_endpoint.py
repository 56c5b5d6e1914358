"""The client endpoint actor: answers `client.*` requests arriving on the node's client ROUTER.

It holds no protocol logic: it reads the node's status snapshot and routes requests onward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pykka

from actors.transport import Inbound, Transport

log = logging.getLogger(__name__)

StatusSource = Callable[[], dict[str, Any]]


class ClientEndpointActor(pykka.ThreadingActor):
    """Answers status and membership queries (key-value requests go to the Raft actor)."""

    def __init__(self, transport: Transport, status: StatusSource, members: StatusSource) -> None:
        super().__init__()
        self._transport = transport
        self._status = status
        self._members = members

    def on_receive(self, message: Any) -> None:
        if not isinstance(message, Inbound) or message.route is None:
            return
        kind = message.envelope.kind
        if kind == "client.status":
            self._transport.reply(message.route, "client.status.ok", self._status())
        elif kind == "client.members":
            self._transport.reply(message.route, "client.members.ok", self._members())
        else:
            self._transport.reply(
                message.route, "client.error", {"error": "unknown-request", "kind": kind}
            )

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        log.error("client endpoint failed: %s", exception_value)
