"""`GossipActor`: drives the SWIM core of one node and publishes its membership view and events.

Inbound `swim.*` frames and ticks go in; messages go out through the transport; member changes go
out as `member.state` node events. Protocol logic stays in `caddy/swim`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import pykka

from actors.events import EventBus
from actors.status_board import MemberStatus, StatusBoard
from actors.ticker import Tick
from actors.transport import Inbound, Transport
from caddy.config import ClusterConfig
from caddy.errors import WireError
from caddy.events import MemberStateChanged, MemberStates
from caddy.swim import MemberEvent, MetaValue, SwimNode, SwimTimings, from_wire, to_wire

log = logging.getLogger(__name__)


class GossipActor(pykka.ThreadingActor):
    """Tell it `Tick()` and `Inbound` swim frames; ask it `leave()` before the node stops."""

    def __init__(
        self,
        config: ClusterConfig,
        node_id: str,
        transport: Transport,
        board: StatusBoard,
        *,
        events: EventBus | None = None,
    ) -> None:
        super().__init__()
        self._node_id = node_id
        self._transport = transport
        self._board = board
        self._addresses = {node.id: node.address for node in config.nodes}
        node = config.node(node_id)
        metadata = {"role": node.role, "client_address": node.client_address, "weight": node.weight}
        if node.zone:
            metadata["zone"] = node.zone
        # A restarted node starts above any incarnation it used before, so its alive news wins.
        incarnation = int(time.time())
        self._swim = SwimNode(
            node_id,
            SwimTimings.from_settings(config.gossip, config.tick_ms),
            random.Random(),
            metadata=metadata,
            incarnation=incarnation,
        )
        self._events = events
        self._member_states = MemberStates()
        board.contribute("members", partial(member_states, board, node_id), top_level=True)
        self._swim.join(peer.id for peer in config.peers_of(node_id))
        self._flush()

    def leave(self) -> None:
        """Announce a graceful leave: peers mark this node `left`, not dead."""
        self._swim.leave()
        self._flush()

    def update_metadata(self, changes: Mapping[str, MetaValue | None]) -> None:
        """Merge `changes` into this node's gossiped metadata (a None value removes the key),
        so that other nodes (and balancers) see it: failover's health and drain state."""
        metadata = dict(self._swim.metadata)
        for key, value in changes.items():
            if value is None:
                metadata.pop(key, None)
            else:
                metadata[key] = value
        if metadata != self._swim.metadata:
            self._swim.update_metadata(metadata)
            self._flush()

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Tick):
            self._swim.tick()
        elif isinstance(message, Inbound):
            envelope = message.envelope
            try:
                swim_message = from_wire(envelope.kind, envelope.body)
            except WireError as error:  # counted (by peer for a peer's), logged rate-limited
                peer = envelope.sender if message.route is None else None
                self._transport.count_body_drop(
                    "swim-body", peer, str(error), source=message.source
                )
                return
            self._swim.step(envelope.sender, swim_message)
        self._flush()

    def _flush(self) -> None:
        ready = self._swim.ready()
        for to, message in ready.messages:
            kind, body = to_wire(message)
            self._transport.send(to, kind, body)
        if ready.events or self._board.members is None:
            self._board.members = {
                view.member: MemberStatus(
                    address=self._addresses.get(view.member, "?"),
                    state=view.state.value,
                    incarnation=view.incarnation,
                    metadata=dict(view.metadata),
                )
                for view in self._swim.members()
            }
            self._board.members_version = self._swim.version
        for event in ready.events:  # after the board: a subscriber may look at the status
            self._publish_event(event)

    def _publish_event(self, event: MemberEvent) -> None:
        if event.member != self._node_id:
            log.info(
                "node %s: member %s is %s (incarnation %d)",
                self._node_id,
                event.member,
                event.kind.value,
                event.incarnation,
            )
        if self._events is not None:
            self._events.publish(MemberStateChanged, **self._member_states.fields(event))


def gossip_view(board: StatusBoard) -> dict[str, Any]:
    """The gossip view of the membership, one entry per member, this node included."""
    members = board.members or {}
    return {
        "members": {member: dataclasses.asdict(info) for member, info in members.items()},
        "version": board.members_version,
    }


def member_states(board: StatusBoard, node_id: str) -> dict[str, Any]:
    """The gossip part of the node's status: every other member's state."""
    members = board.members or {}
    return {
        "members": {member: info.state for member, info in members.items() if member != node_id}
    }
