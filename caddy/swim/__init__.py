"""SWIM membership with Lifeguard: the pure protocol core, its messages and its timings.

`SwimNode` is driven by the GossipActor (or the simulator) through tick/step/ready.
"""

from caddy.swim.members import (
    EventKind,
    MemberEvent,
    MemberState,
    MemberView,
    Metadata,
    MetaValue,
)
from caddy.swim.messages import (
    KINDS,
    Ack,
    Alive,
    Dead,
    Gossip,
    Left,
    MemberRecord,
    Message,
    Nack,
    Ping,
    PingReq,
    Suspect,
    Sync,
    Update,
    from_wire,
    to_wire,
)
from caddy.swim.node import Ready, SwimNode
from caddy.swim.timings import SwimError, SwimTimings

__all__ = [
    "KINDS",
    "Ack",
    "Alive",
    "Dead",
    "EventKind",
    "Gossip",
    "Left",
    "MemberEvent",
    "MemberRecord",
    "MemberState",
    "MemberView",
    "Message",
    "MetaValue",
    "Metadata",
    "Nack",
    "Ping",
    "PingReq",
    "Ready",
    "Suspect",
    "SwimError",
    "SwimNode",
    "SwimTimings",
    "Sync",
    "Update",
    "from_wire",
    "to_wire",
]
