"""`ClusterManager`: spawns, wires, starts and stops the actors and the I/O thread of one node.

A user's program runs a node with `ClusterManager(node_id, config).start()`, as caddy-node does.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import pykka

from actors.client_endpoint import ClientEndpointActor
from actors.gossip_actor import GossipActor
from actors.raft_actor import RaftActor, ReadRouters
from actors.status_board import StatusBoard
from actors.ticker import Ticker
from actors.transport import Transport
from caddy.config import ClusterConfig
from caddy.replication.kv import KeyValueStore
from caddy.replication.state_machine import StateMachine

log = logging.getLogger(__name__)


class ClusterManager:
    """One node: its transport, ticker and actors. `start()` then `stop()`; safe to stop twice."""

    def __init__(
        self, node_id: str, config: ClusterConfig, state_machine: StateMachine | None = None
    ) -> None:
        """`state_machine` is what Raft replicates; the key-value store unless you pass your own."""
        self.node_id = node_id
        self.config = config
        self.node_config = config.node(node_id)
        self.transport = Transport(config, node_id)
        self.ticker = Ticker(config.tick_ms, name=f"caddy-ticker-{node_id}")
        self.board = StatusBoard()
        self._state_machine = state_machine or KeyValueStore()
        self._actors: list[pykka.ActorRef] = []
        self._raft: pykka.ActorRef | None = None
        self._gossip: pykka.ActorRef | None = None
        self._started_at: float | None = None
        self._running = False

    def start(self) -> ClusterManager:
        self._started_at = time.monotonic()
        self._raft = RaftActor.start(
            self.config, self.node_id, self.transport, self._state_machine, self.board
        )
        self._actors.append(self._raft)
        self.transport.register("raft", self._raft.tell, batched=True)
        self.transport.register("kv", self._raft.tell, batched=True)
        self.ticker.register(self._raft)
        self._gossip = GossipActor.start(self.config, self.node_id, self.transport, self.board)
        self._actors.append(self._gossip)
        self.transport.register("swim", self._gossip.tell)
        self.ticker.register(self._gossip)
        endpoint = ClientEndpointActor.start(self.transport, self.status, self.members)
        self._actors.append(endpoint)
        self.transport.register("client", endpoint.tell)
        self.transport.start()
        self._raft.tell(ReadRouters(self._raft.tell))
        self.ticker.start()
        self._running = True
        log.info(
            "node %s: started (peer %s, client %s)",
            self.node_id,
            self.node_config.address,
            self.node_config.client_address,
        )
        return self

    def stop(self, graceful: bool = True) -> None:
        """Stop the node. Gracefully: a leader hands leadership over and drains its requests."""
        if not self._running:
            return
        if graceful:
            self._hand_over_and_drain()
            self._leave_gossip()
        self._running = False
        self.ticker.stop()
        for actor in reversed(self._actors):
            actor.stop(block=True, timeout=5)
        self._actors.clear()
        self.transport.stop()
        log.info("node %s: stopped", self.node_id)

    def _hand_over_and_drain(self) -> None:
        """Bounded by the failover drain timeout; a follower has nothing to hand over."""
        if self._raft is None or self.board.raft is None or self.board.raft.state != "leader":
            return
        deadline = time.monotonic() + self.config.failover.drain_timeout_ms / 1000
        try:
            target = self._raft.proxy().hand_over_leadership().get(timeout=5)
        except Exception as error:  # the node stops anyway; say why the hand-over failed
            log.warning("node %s: leadership hand-over failed: %s", self.node_id, error)
            return
        log.info("node %s: handing leadership over to %s", self.node_id, target)
        give_up_transfer = time.monotonic() + 3 * self.config.raft.election_timeout_max_ms / 1000
        while time.monotonic() < deadline:
            raft = self.board.raft
            if raft.pending_writes == 0:
                if raft.state != "leader":
                    log.info("node %s: leadership moved to %s", self.node_id, raft.leader)
                    return
                if time.monotonic() > give_up_transfer:
                    log.warning("node %s: leadership transfer did not finish", self.node_id)
                    return
            time.sleep(0.01)
        log.warning("node %s: drain timeout passed; stopping anyway", self.node_id)

    def _leave_gossip(self) -> None:
        """Tell the group we leave (so peers say `left`, not `dead`) and let the news spread."""
        if self._gossip is None:
            return
        try:
            self._gossip.proxy().leave().get(timeout=2)
        except Exception as error:
            log.warning("node %s: could not announce the leave: %s", self.node_id, error)
            return
        time.sleep(3 * self.config.gossip.gossip_interval_ms / 1000)  # a few gossip rounds

    def failed_actors(self) -> list[str]:
        """Names of this node's actors that died (a bug, or a state machine that raised)."""
        return [ref.actor_class.__name__ for ref in self._actors if not ref.is_alive()]

    def __enter__(self) -> ClusterManager:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----- accessors (filled by the Raft, gossip, balancing, fencing and failover subsystems) ---

    def raft(self) -> pykka.ActorProxy | None:
        return self._raft.proxy() if self._raft is not None else None

    def membership(self) -> pykka.ActorProxy | None:
        return self._gossip.proxy() if self._gossip is not None else None

    def load_balancer(self) -> pykka.ActorProxy | None:
        return None

    def fencing(self) -> pykka.ActorProxy | None:
        return None

    def failover(self) -> pykka.ActorProxy | None:
        return None

    # ----- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The node's status document (CONTRACT section 4), safe to call from any thread."""
        peers = self.transport.peer_stats()
        uptime = time.monotonic() - self._started_at if self._started_at else 0.0
        raft = self.board.raft
        return {
            "id": self.node_id,
            "cluster": self.config.cluster,
            "role": self.node_config.role,
            "uptime_s": round(uptime, 3),
            **(dataclasses.asdict(raft) if raft is not None else {}),
            "members": {
                member_id: info["state"]
                for member_id, info in self.members()["members"].items()
                if member_id != self.node_id
            },
            "peers": {
                peer_id: {
                    "hearing": stats.hearing,
                    "connected": stats.connected,
                    "last_heard_s": stats.last_heard_s,
                    "msgs_in": stats.msgs_in,
                    "msgs_out": stats.msgs_out,
                    "bytes_in": stats.bytes_in,
                    "bytes_out": stats.bytes_out,
                    "drops_out": stats.drops_out,
                }
                for peer_id, stats in peers.items()
            },
            "dropped": {**self.transport.drop_counts(), **self.board.body_drops},
            "closed_connections": self.transport.closed_connections,
        }

    def members(self) -> dict[str, Any]:
        """The gossip view of the membership, one entry per member, this node included."""
        members = self.board.members or {}
        return {
            "members": {member: dataclasses.asdict(info) for member, info in members.items()},
            "version": self.board.members_version,
        }
