"""The client endpoint actor: answers `client.*` requests arriving on the node's client ROUTER.

It holds no protocol logic: it reads the node's status snapshot and routes requests onward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pykka

from actors.events import EventBus
from actors.transport import Inbound, Transport

log = logging.getLogger(__name__)

StatusSource = Callable[[], dict[str, Any]]


class ClientEndpointActor(pykka.ThreadingActor):
    """Answers status and membership queries, drain and reload requests (key-value requests go
    to the Raft actor); `failover`: the node's FailoverActor, which drains; `reload`: the
    node's settings reload (`ClusterManager.reload`)."""

    def __init__(
        self,
        transport: Transport,
        status: StatusSource,
        members: StatusSource,
        events: EventBus | None = None,
        failover: pykka.ActorRef | None = None,
        default_drain_s: float = 30.0,
        reload: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self._transport = transport
        self._status = status
        self._members = members
        self._events = events
        self._failover = failover.proxy() if failover is not None else None
        self._default_drain_s = default_drain_s
        self._reload = reload

    def on_receive(self, message: Any) -> None:
        if not isinstance(message, Inbound) or message.route is None:
            return
        kind = message.envelope.kind
        if kind == "client.status":
            self._transport.reply(message.route, "client.status.ok", self._status())
        elif kind == "client.members":
            self._transport.reply(message.route, "client.members.ok", self._members())
        elif kind == "client.events" and self._events is not None:
            self._transport.reply(message.route, "client.events.ok", self._recent(message))
        elif kind in ("client.drain", "client.undrain") and self._failover is not None:
            self._transport.reply(message.route, f"{kind}.ok", self._drain(kind, message))
        elif kind == "client.reload" and self._reload is not None:
            self._transport.reply(message.route, "client.reload.ok", self._reload())
        else:
            self._transport.reply(
                message.route, "client.error", {"error": "unknown-request", "kind": kind}
            )

    def _recent(self, message: Inbound) -> dict[str, Any]:
        """The node's events after the `after` seq the watcher last saw (all it keeps, when
        that is older), newest last; `restarted` when `after` is beyond this node's newest."""
        assert self._events is not None
        body = message.envelope.body if isinstance(message.envelope.body, dict) else {}
        after = body.get("after", 0)
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            after = 0
        restarted = after > self._events.last_seq  # a new process numbers from 1 again
        events = self._events.recent(0 if restarted else after)
        return {"events": [event.to_dict() for event in events], "restarted": restarted}

    def _drain(self, kind: str, message: Inbound) -> dict[str, Any]:
        """Start (or end) a drain; the answer comes at once, `caddy-ctl` follows the status."""
        assert self._failover is not None
        if kind == "client.undrain":
            return {"undrained": self._failover.undrain().get(timeout=10)}
        body = message.envelope.body if isinstance(message.envelope.body, dict) else {}
        timeout_s = body.get("timeout_s")
        if not isinstance(timeout_s, int | float) or isinstance(timeout_s, bool) or timeout_s < 0:
            timeout_s = self._default_drain_s
        self._failover.drain("caddy-ctl drain", float(timeout_s)).get(timeout=10)
        return {"draining": True}

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        log.error("client endpoint failed: %s", exception_value)
