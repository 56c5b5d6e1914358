"""The subsystems a node runs, as one list of specs: what each owns and how it is started.

`ClusterManager` starts them in list order and stops them in reverse; a new subsystem joins a node
by adding a spec here (or to the list a user passes to `ClusterManager`), and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import pykka

from actors.balancer_actor import EVENTS_TOLD as BALANCER_EVENTS
from actors.balancer_actor import TICK_MS as BALANCER_TICK_MS
from actors.balancer_actor import BalancerActor
from actors.client_endpoint import ClientEndpointActor
from actors.event_publisher import EventPublisherActor
from actors.events import EventBus
from actors.failover_actor import EVENTS_TOLD as FAILOVER_EVENTS
from actors.failover_actor import TICK_MS as FAILOVER_TICK_MS
from actors.failover_actor import FailoverActor
from actors.fencing_actor import EVALUATE_EVERY_MS, FencingActor
from actors.fencing_actor import EVENTS_TOLD as FENCING_EVENTS
from actors.gossip_actor import GossipActor
from actors.health_checks import UserCheck
from actors.raft_actor import EVENTS_TOLD as RAFT_EVENTS
from actors.raft_actor import RaftActor
from actors.status_board import StatusBoard
from actors.transport import Transport
from caddy.config import ClusterConfig
from caddy.replication.state_machine import StateMachine


@dataclass(frozen=True, slots=True)
class NodeContext:
    """What a subsystem is started with: the node's config, transport, status board and events."""

    node_id: str
    config: ClusterConfig
    transport: Transport
    board: StatusBoard
    events: EventBus
    state_machine: StateMachine
    status: Callable[[], dict[str, Any]]  # the node's whole status document
    members: Callable[[], dict[str, Any]]  # the gossip view
    started: Mapping[str, pykka.ActorRef]  # the subsystems started before this one, by name
    health_checks: Sequence[UserCheck] = ()  # the user's own checks, given in code
    join: bool = False  # joining a running cluster: not a member of the topology's membership
    reload: Callable[[], dict[str, Any]] | None = None  # re-read the topology's live settings


def _always(config: ClusterConfig) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class SubsystemSpec:
    """One subsystem of a node.

    - `start(context)` starts its actor and returns the ref (it may post status sections on
      `context.board` and publish on `context.events`);
    - `prefixes`: the message kinds `PREFIX.*` it owns on the peer port, `client_prefixes` those
      on the client port (a kind a port does not take is dropped there, and a client's connection
      that sends one is cut); with `batched`, it gets an `InboundBatch` per drain of the sockets
      instead of one `Inbound` each;
    - `ticks`: it is told `Tick()` every `tick_ms`, or every `tick_every_ms` rounded to whole
      ticks;
    - `events`: the node event kinds (or prefixes such as `"leader."`) it is told; None: none;
    - `reads_sockets`: its inbox reads the node's routers itself (`ReadingInbox`; one subsystem
      at most, the Raft driver, whose messages then skip a thread hand-over);
    - `enabled(config)`: False when the topology switches it off (its accessor returns None).
    """

    name: str
    start: Callable[[NodeContext], pykka.ActorRef]
    prefixes: tuple[str, ...] = ()
    client_prefixes: tuple[str, ...] = ()
    batched: bool = False
    ticks: bool = False
    tick_every_ms: int | None = None  # with `ticks`: told that often (whole ticks), not every tick
    events: tuple[str, ...] | None = None
    reads_sockets: bool = False
    enabled: Callable[[ClusterConfig], bool] = _always


def _start_raft(context: NodeContext) -> pykka.ActorRef:
    return RaftActor.start(
        context.config,
        context.node_id,
        context.transport,
        context.state_machine,
        context.board,
        events=context.events,
        join=context.join,
    )


def _start_gossip(context: NodeContext) -> pykka.ActorRef:
    return GossipActor.start(
        context.config, context.node_id, context.transport, context.board, events=context.events
    )


def _start_fencing(context: NodeContext) -> pykka.ActorRef:
    return FencingActor.start(
        context.config, context.node_id, context.transport, context.board, context.events
    )


def _start_failover(context: NodeContext) -> pykka.ActorRef:
    return FailoverActor.start(
        context.config,
        context.node_id,
        context.transport,
        context.board,
        context.events,
        raft=context.started.get("raft"),
        gossip=context.started.get("gossip"),
        user_checks=context.health_checks,
    )


def _start_event_publisher(context: NodeContext) -> pykka.ActorRef:
    address = context.config.node(context.node_id).events_address
    ref = EventPublisherActor.start(address)
    if address:  # in a topology where only some nodes publish, the others' actor idles
        context.events.subscribe(ref)
    return ref


def _publishes_events(config: ClusterConfig) -> bool:
    return any(node.events_address for node in config.nodes)


def _start_balancer(context: NodeContext) -> pykka.ActorRef:
    return BalancerActor.start(
        context.config,
        context.node_id,
        context.transport,
        context.board,
        registry=partial(context.board.section, "registry"),
    )


def _has_services(config: ClusterConfig) -> bool:
    return bool(config.services)


def _start_client_endpoint(context: NodeContext) -> pykka.ActorRef:
    return ClientEndpointActor.start(
        context.transport,
        context.status,
        context.members,
        events=context.events,
        failover=context.started.get("failover"),
        default_drain_s=context.config.failover.drain_timeout_ms / 1000,
        reload=context.reload,
    )


RAFT = SubsystemSpec(
    "raft",
    _start_raft,
    prefixes=("raft",),
    client_prefixes=("kv",),
    batched=True,
    ticks=True,
    events=RAFT_EVENTS,
    reads_sockets=True,
)
GOSSIP = SubsystemSpec("gossip", _start_gossip, prefixes=("swim",), ticks=True)
FENCING = SubsystemSpec(
    "fencing", _start_fencing, ticks=True, tick_every_ms=EVALUATE_EVERY_MS, events=FENCING_EVENTS
)
FAILOVER = SubsystemSpec(
    "failover",
    _start_failover,
    client_prefixes=("admin",),
    ticks=True,
    tick_every_ms=FAILOVER_TICK_MS,
    events=FAILOVER_EVENTS,
)
EVENT_PUBLISHER = SubsystemSpec(
    "event_publisher", _start_event_publisher, enabled=_publishes_events
)
BALANCER = SubsystemSpec(
    "balancer",
    _start_balancer,
    client_prefixes=("balance",),
    ticks=True,
    tick_every_ms=BALANCER_TICK_MS,
    events=BALANCER_EVENTS,
    enabled=_has_services,
)
CLIENT_ENDPOINT = SubsystemSpec("client", _start_client_endpoint, client_prefixes=("client",))

DEFAULT_SUBSYSTEMS: tuple[SubsystemSpec, ...] = (
    RAFT,
    GOSSIP,
    FENCING,
    FAILOVER,
    BALANCER,
    EVENT_PUBLISHER,
    CLIENT_ENDPOINT,
)
