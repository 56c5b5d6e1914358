"""`ClusterManager`: spawns, wires, starts and stops the actors and the I/O thread of one node.

A user's program runs a node with `ClusterManager(node_id, config).start()`, as caddy-node does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import pykka

from actors.events import EventBus, Subscription
from actors.gossip_actor import gossip_view
from actors.health_checks import UserCheck
from actors.leadership import EVENT_KINDS as LEADERSHIP_EVENTS
from actors.leadership import LeadershipRunner, LeadershipToken
from actors.reading_inbox import ReadRouters
from actors.status_board import StatusBoard
from actors.subsystems import DEFAULT_SUBSYSTEMS, NodeContext, SubsystemSpec
from actors.ticker import Ticker
from actors.transport import Transport, transport_status
from caddy.config import ClusterConfig, ConfigError, load_topology
from caddy.events import NodeEvent, NodeStarting, NodeStopping
from caddy.reload import plan_reload
from caddy.replication.kv import KeyValueStore
from caddy.replication.state_machine import StateMachine

log = logging.getLogger(__name__)

RELOAD_WAIT_S = 5.0  # the longest a subsystem may take to adopt reloaded settings


class ClusterManager:
    """One node: its transport, ticker, event bus and subsystems. `start()` then `stop()`; safe
    to stop twice."""

    def __init__(
        self,
        node_id: str,
        config: ClusterConfig,
        state_machine: StateMachine | None = None,
        subsystems: Sequence[SubsystemSpec] = DEFAULT_SUBSYSTEMS,
        health_checks: Sequence[UserCheck] = (),
        join: bool = False,
        reload_from: Callable[[], ClusterConfig] | None = None,
    ) -> None:
        """`state_machine` is what Raft replicates; the key-value store unless you pass your own.
        `subsystems`: what the node runs, started in this order (see `actors.subsystems`).
        `health_checks`: callables run with the topology's checks each check interval (a check
        fails when it returns False, raises or takes longer than the interval).
        `join`: the node joins a running cluster (`caddy-node --join`): it starts a member of
        nothing, not of the topology's membership, and waits to be added (`caddy.joining`).
        `reload_from`: where `reload()` reads the new settings; by default the topology file
        the config was loaded from."""
        names = [spec.name for spec in subsystems]
        if len(set(names)) != len(names):
            raise ValueError(f"subsystem names must be unique, got {names}")
        self.node_id = node_id
        self.config = config
        self.node_config = config.node(node_id)
        self.transport = Transport(config, node_id)
        self.ticker = Ticker(config.tick_ms, name=f"caddy-ticker-{node_id}")
        self.board = StatusBoard()
        self.events = EventBus(node_id)
        self._specs = tuple(spec for spec in subsystems if spec.enabled(config))
        self._state_machine = state_machine or KeyValueStore()
        self._health_checks = tuple(health_checks)
        self._join = join
        self._reload_from = reload_from or partial(load_topology, config.source)
        self._reload_lock = threading.Lock()
        self._refs: dict[str, pykka.ActorRef] = {}  # by subsystem name, in start order
        self._started_at: float | None = None
        self._running = False
        self.board.contribute("node", self._node_section, top_level=True)

    def start(self) -> ClusterManager:
        self._started_at = time.monotonic()
        self.events.publish(NodeStarting)
        context = NodeContext(
            node_id=self.node_id,
            config=self.config,
            transport=self.transport,
            board=self.board,
            events=self.events,
            state_machine=self._state_machine,
            status=self.status,
            members=self.members,
            started=self._refs,
            health_checks=self._health_checks,
            join=self._join,
            reload=self.reload,
        )
        for spec in self._specs:
            ref = spec.start(context)
            self._refs[spec.name] = ref
            for prefix in spec.prefixes:
                self.transport.register(prefix, ref.tell, batched=spec.batched, port="peer")
            for prefix in spec.client_prefixes:
                self.transport.register(prefix, ref.tell, batched=spec.batched, port="client")
            if spec.ticks:
                every_ms = spec.tick_every_ms or self.config.tick_ms
                self.ticker.register(ref, every=max(1, round(every_ms / self.config.tick_ms)))
            if spec.events is not None:
                self.events.subscribe(ref, kinds=spec.events)
        self.board.contribute(
            "transport", partial(transport_status, self.transport, self.board), top_level=True
        )
        self.transport.start()
        for spec in self._specs:
            if spec.reads_sockets:
                ref = self._refs[spec.name]
                ref.tell(ReadRouters(ref.tell))
        self.ticker.start()
        self._running = True
        log.info(
            "node %s: started (peer %s, client %s)",
            self.node_id,
            self.node_config.address,
            self.node_config.client_address,
        )
        return self

    def subscribe(
        self,
        target: pykka.ActorRef | Callable[[NodeEvent], Any],
        kinds: Iterable[str | type[NodeEvent]] | None = None,
    ) -> Subscription:
        """Deliver this node's events (all, or those of `kinds`) to an actor by `tell`, or to a
        callback on a thread of its own: a callback that raises is logged and called again for
        the next event; it never slows or stops the node."""
        return self.events.subscribe(target, kinds=kinds)

    def on_leadership(self, callback: Callable[[LeadershipToken], Any]) -> Subscription:
        """Run `callback(token)` on a thread of its own whenever this node becomes leader; the
        token (an int: the term, greater for every later leadership) is the fencing token to
        present to resources, and `token.lost` is set when the leadership ends (lost, or the
        node stopping): the callback's cancellation. Call it before `start()` not to miss the
        first leadership."""
        return self.events.subscribe(
            LeadershipRunner(self.node_id, callback), kinds=LEADERSHIP_EVENTS
        )

    def stop(self, graceful: bool = True) -> None:
        """Stop the node. Gracefully: a leader hands leadership over and drains its requests."""
        if not self._running:
            return
        self.events.publish(NodeStopping)
        if graceful:
            self._hand_over_and_drain()
            self._leave_gossip()
        self._running = False
        self.ticker.stop()
        for ref in reversed(self._refs.values()):
            ref.stop(block=True, timeout=5)
        self._refs.clear()
        self.events.close()
        self.transport.stop()
        log.info("node %s: stopped", self.node_id)

    def drain(self, reason: str, timeout_s: float | None = None) -> threading.Event | None:
        """Start draining this node (see `actors.drain`): the event is set when it finished.
        None when the node runs no failover subsystem. `timeout_s`: the topology's
        `failover.drain_timeout_ms` unless given."""
        failover = self.failover()
        if failover is None:
            return None
        if timeout_s is None:
            timeout_s = self.config.failover.drain_timeout_ms / 1000
        return failover.drain(reason, timeout_s).get(timeout=10)

    def _hand_over_and_drain(self) -> None:
        """Drain before stopping, bounded by the drain timeout (and a margin for the asks)."""
        try:
            finished = self.drain("stopping")
        except Exception as error:  # the node stops anyway; say why the drain failed
            log.warning("node %s: drain failed: %s", self.node_id, error)
            return
        timeout_s = self.config.failover.drain_timeout_ms / 1000
        if finished is not None and not finished.wait(timeout_s + 1):
            log.warning("node %s: drain timeout passed; stopping anyway", self.node_id)

    def _leave_gossip(self) -> None:
        """Tell the group we leave (so peers say `left`, not `dead`) and let the news spread."""
        gossip = self.membership()
        if gossip is None:
            return
        try:
            gossip.leave().get(timeout=2)
        except Exception as error:
            log.warning("node %s: could not announce the leave: %s", self.node_id, error)
            return
        time.sleep(3 * self.config.gossip.gossip_interval_ms / 1000)  # a few gossip rounds

    def failed_actors(self) -> list[str]:
        """Names of this node's actors that died (a bug, or a state machine that raised)."""
        return [ref.actor_class.__name__ for ref in self._refs.values() if not ref.is_alive()]

    def __enter__(self) -> ClusterManager:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----- accessors: None for a subsystem that is not running ---------------------------------

    def subsystem(self, name: str) -> pykka.ActorProxy | None:
        """The proxy of the running subsystem `name` (a spec's name), None if it is not running."""
        ref = self._refs.get(name)
        return ref.proxy() if ref is not None else None

    def raft(self) -> pykka.ActorProxy | None:
        return self.subsystem("raft")

    def membership(self) -> pykka.ActorProxy | None:
        return self.subsystem("gossip")

    def load_balancer(self) -> pykka.ActorProxy | None:
        return self.subsystem("balancer")

    def fencing(self) -> pykka.ActorProxy | None:
        return self.subsystem("fencing")

    def failover(self) -> pykka.ActorProxy | None:
        return self.subsystem("failover")

    # ----- settings reload ---------------------------------------------------------------------

    def reload(self) -> dict[str, Any]:
        """Re-read the topology and take its live settings (SIGHUP, `caddy-ctl reload`; which
        are live: `caddy.reload`): what changed, or `{"error": [lines]}` for a file that does
        not load, and then nothing changed. From any thread, one reload at a time."""
        with self._reload_lock:
            try:
                plan = plan_reload(self.config, self._reload_from())
            except ConfigError as error:
                for line in error.problems:
                    log.error("node %s: reload refused, settings unchanged: %s", self.node_id, line)
                return {"error": list(error.problems)}
            if plan.applied:
                for ref in self._refs.values():
                    if hasattr(ref.actor_class, "reload_settings"):
                        ref.proxy().reload_settings(plan.config).get(timeout=RELOAD_WAIT_S)
                self.config = plan.config
            for difference in plan.applied:
                log.info("node %s: reloaded %s", self.node_id, difference.describe())
            for difference in plan.restart_needed:
                log.warning(
                    "node %s: %s needs a restart to take effect",
                    self.node_id,
                    difference.describe(),
                )
            for note in plan.notes:
                log.warning("node %s: %s", self.node_id, note)
            if any(difference.path == "log_level" for difference in plan.applied):
                logging.getLogger().setLevel(plan.config.log_level)  # after saying what changed
            return plan.document()

    # ----- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The node's status document : every subsystem's section, as
        contributed to the status board; safe to call from any thread."""
        return self.board.document()

    def members(self) -> dict[str, Any]:
        """The gossip view of the membership, one entry per member, this node included."""
        return gossip_view(self.board)

    def _node_section(self) -> dict[str, Any]:
        uptime = time.monotonic() - self._started_at if self._started_at else 0.0
        return {
            "id": self.node_id,
            "cluster": self.config.cluster,
            "role": self.node_config.role,
            "uptime_s": round(uptime, 3),
        }
