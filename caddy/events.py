"""Node events: immutable values one node's subsystems publish and others (and users) watch.

A publisher names the event class and its own fields; the bus (`actors/events.py`) stamps `node`,
`seq` and `time`; `to_dict()` is the JSON shape. The set of kinds is open: a later subsystem
declares its events with `@register` and they join `EVENT_KINDS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from caddy.swim import EventKind, MemberEvent, MemberState, MetaValue

E = TypeVar("E", bound="NodeEvent")

_STAMP = ("node", "seq", "time")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeEvent:
    """What every event carries: the node it happened on, its per-node order, its wall time."""

    kind: ClassVar[str]
    node: str
    seq: int
    time: float

    def to_dict(self) -> dict[str, Any]:
        """`{"node", "seq", "time", "kind", ...fields}`, JSON-ready (tuples become lists)."""
        out: dict[str, Any] = {
            "node": self.node,
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
        }
        for each in fields(self):
            if each.name not in _STAMP:
                out[each.name] = _plain(getattr(self, each.name))
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


EVENT_KINDS: dict[str, type[NodeEvent]] = {}


def register(cls: type[E]) -> type[E]:
    """Class decorator adding an event class to `EVENT_KINDS`, so subscribers can name its kind."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind or kind.endswith("."):
        raise ValueError(f"{cls.__name__}: kind must be a name like 'leader.elected'")
    if EVENT_KINDS.get(kind, cls) is not cls:
        raise ValueError(f"{cls.__name__}: kind {kind!r} is already {EVENT_KINDS[kind].__name__}")
    EVENT_KINDS[kind] = cls
    return cls


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderChanged(NodeEvent):
    """The leader this node knows changed; `state` is this node's own Raft state now."""

    kind: ClassVar[str] = "leader.changed"
    term: int
    leader: str | None
    state: str  # leader | follower | candidate | learner | witness


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderElected(NodeEvent):
    """This node became leader."""

    kind: ClassVar[str] = "leader.elected"
    term: int


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderLost(NodeEvent):
    """This node stopped being leader; `leader` is its successor when known."""

    kind: ClassVar[str] = "leader.lost"
    term: int
    leader: str | None


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipChanged(NodeEvent):
    """The Raft configuration in force changed."""

    kind: ClassVar[str] = "membership.changed"
    voters: tuple[str, ...]
    learners: tuple[str, ...]
    witnesses: tuple[str, ...]

    def __post_init__(self) -> None:
        # Raft holds these as frozensets: sorted tuples are immutable and compare, print stably.
        for name in ("voters", "learners", "witnesses"):
            object.__setattr__(self, name, tuple(sorted(getattr(self, name))))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class MemberStateChanged(NodeEvent):
    """A member's state in this node's SWIM view changed, or (`update`) its metadata did.

    `previous` is the state this node last reported for the member, None when first seen; on an
    update it equals `state`. `metadata` is the member's metadata after the change.
    """

    kind: ClassVar[str] = "member.state"
    member: str
    state: str  # alive | suspect | dead | left
    incarnation: int
    previous: str | None
    update: bool = False
    metadata: Mapping[str, MetaValue] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotTaken(NodeEvent):
    """This node compacted its log into a snapshot up to `index`."""

    kind: ClassVar[str] = "snapshot.taken"
    index: int
    term: int


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotInstalled(NodeEvent):
    """This node replaced its state with a snapshot sent by the leader."""

    kind: ClassVar[str] = "snapshot.installed"
    index: int
    term: int


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryChanged(NodeEvent):
    """The replicated service registry changed (`caddy.replication.registry`): each service
    with its backends as (id, address, weight, draining), in id order."""

    kind: ClassVar[str] = "registry.changed"
    version: int
    services: tuple[tuple[str, tuple[tuple[str, str, int, bool], ...]], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class QuorumEvent(NodeEvent):
    """A change of this node's quorum view (`caddy.quorum`): the members of the Raft
    configuration it can reach and those it cannot, as it sees them."""

    kind: ClassVar[str] = ""
    reachable: tuple[str, ...]
    unreachable: tuple[str, ...]


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class QuorumLost(QuorumEvent):
    """The members this node can reach can no longer make progress."""

    kind: ClassVar[str] = "quorum.lost"


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class QuorumRegained(QuorumEvent):
    """The members this node can reach can make progress again."""

    kind: ClassVar[str] = "quorum.regained"


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionDetected(QuorumEvent):
    """Members of the configuration became unreachable (told again when the sides change)."""

    kind: ClassVar[str] = "partition.detected"


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionHealed(QuorumEvent):
    """Every member of the configuration is reachable again."""

    kind: ClassVar[str] = "partition.healed"


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class MemberSuspect(NodeEvent):
    """Gossip on this node suspects `member` (it missed probes; not yet declared dead)."""

    kind: ClassVar[str] = "member.suspect"
    member: str


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class MemberFailed(NodeEvent):
    """This node's failover judged `member` failed (`caddy.failover`): its checks failed
    `failure_threshold` times in a row; `reason` is the last failure."""

    kind: ClassVar[str] = "member.failed"
    member: str
    reason: str


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class MemberRecovered(NodeEvent):
    """A member this node judged failed passed its checks `failure_threshold` times in a row."""

    kind: ClassVar[str] = "member.recovered"
    member: str


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class LeadershipMoved(NodeEvent):
    """This leader handed leadership to `leader` on its own (failover or drain), and why."""

    kind: ClassVar[str] = "leadership.moved"
    leader: str
    reason: str


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class LearnerPromoted(NodeEvent):
    """This leader made learner `member` a voter, and why."""

    kind: ClassVar[str] = "learner.promoted"
    member: str
    reason: str


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class VoterRemoved(NodeEvent):
    """This leader removed voter `member` from the configuration, and why."""

    kind: ClassVar[str] = "voter.removed"
    member: str
    reason: str


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class DrainStarted(NodeEvent):
    """This node stopped taking new client requests; those in flight may finish."""

    kind: ClassVar[str] = "drain.started"
    reason: str


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class DrainFinished(NodeEvent):
    """This node's drain ended: `in_flight` requests were still unanswered at its end."""

    kind: ClassVar[str] = "drain.finished"
    in_flight: int


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStarting(NodeEvent):
    """The node is starting its subsystems."""

    kind: ClassVar[str] = "node.starting"


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStopping(NodeEvent):
    """The node is about to stop its subsystems."""

    kind: ClassVar[str] = "node.stopping"


_STATE_AFTER = {
    EventKind.JOIN: MemberState.ALIVE,
    EventKind.SUSPECT: MemberState.SUSPECT,
    EventKind.ALIVE: MemberState.ALIVE,
    EventKind.DEAD: MemberState.DEAD,
    EventKind.LEAVE: MemberState.LEFT,
}


class MemberStates:
    """Turns SWIM `MemberEvent`s into `MemberStateChanged` fields.

    SWIM says what happened (join, suspect, ...), not the state before; this remembers the last
    state per member so the gossip actor can `publish(MemberStateChanged, **states.fields(e))`.
    """

    __slots__ = ("_states",)

    def __init__(self) -> None:
        self._states: dict[str, str] = {}

    def fields(self, event: MemberEvent) -> dict[str, Any]:
        """The fields of the `MemberStateChanged` for `event`, and remember its state."""
        previous = self._states.get(event.member)
        update = event.kind is EventKind.UPDATE
        if update:
            state = previous or MemberState.ALIVE.value
        else:
            state = _STATE_AFTER[event.kind].value
        self._states[event.member] = state
        return {
            "member": event.member,
            "state": state,
            "incarnation": event.incarnation,
            "previous": previous,
            "update": update,
            "metadata": event.metadata,
        }


Kind = str | type[NodeEvent]
# What `subscribe(kinds=...)` takes: None (everything), one kind, or several.
Kinds = Kind | Iterable[Kind] | None


@dataclass(frozen=True, slots=True)
class KindFilter:
    """Which event kinds a subscriber takes: exact kinds plus `family.` prefixes."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]

    @classmethod
    def of(cls, kinds: Kinds) -> KindFilter:
        """None takes every kind; otherwise kind names, event classes and prefixes ending in ".".

        An unknown exact kind raises ValueError (a typo would otherwise silently deliver nothing);
        prefixes are not checked, so a family whose classes load later can still be named.
        """
        if kinds is None:
            return cls(frozenset(), ("",))
        if isinstance(kinds, str | type):
            kinds = (kinds,)
        exact: set[str] = set()
        prefixes: list[str] = []
        for kind in kinds:
            if isinstance(kind, type) and issubclass(kind, NodeEvent):
                kind = getattr(kind, "kind", "")
            if not isinstance(kind, str):
                raise ValueError(f"not an event kind: {kind!r}")
            if kind.endswith(".") and len(kind) > 1:
                prefixes.append(kind)
            elif kind in EVENT_KINDS:
                exact.add(kind)
            else:
                raise ValueError(f"unknown event kind {kind!r}; known: {sorted(EVENT_KINDS)}")
        if not exact and not prefixes:
            raise ValueError("no event kinds given; pass None for every kind")
        return cls(frozenset(exact), tuple(prefixes))

    def matches(self, kind: str) -> bool:
        return kind in self.exact or kind.startswith(self.prefixes)
