"""Node event values: the kinds registry, the JSON shape, immutability, the SWIM member mapping and
the subscribers' kind filter."""

import dataclasses
import json
from typing import ClassVar

import pytest

from caddy.events import (
    EVENT_KINDS,
    DrainFinished,
    DrainStarted,
    KindFilter,
    LeaderChanged,
    LeaderElected,
    LeaderLost,
    LeadershipMoved,
    LearnerPromoted,
    MemberFailed,
    MemberRecovered,
    MembershipChanged,
    MemberStateChanged,
    MemberStates,
    MemberSuspect,
    NodeEvent,
    NodeStarting,
    NodeStopping,
    PartitionDetected,
    PartitionHealed,
    QuorumLost,
    QuorumRegained,
    RegistryChanged,
    SnapshotInstalled,
    SnapshotTaken,
    VoterRemoved,
    register,
)
from caddy.swim import EventKind, MemberEvent

STAMP = {"node": "n1", "seq": 7, "time": 1764660000.12}


def test_the_registry_holds_every_event_class_by_its_kind():
    assert EVENT_KINDS == {
        "leader.changed": LeaderChanged,
        "leader.elected": LeaderElected,
        "leader.lost": LeaderLost,
        "membership.changed": MembershipChanged,
        "member.state": MemberStateChanged,
        "snapshot.taken": SnapshotTaken,
        "snapshot.installed": SnapshotInstalled,
        "node.starting": NodeStarting,
        "quorum.lost": QuorumLost,
        "quorum.regained": QuorumRegained,
        "partition.detected": PartitionDetected,
        "partition.healed": PartitionHealed,
        "node.stopping": NodeStopping,
        "member.suspect": MemberSuspect,
        "member.failed": MemberFailed,
        "member.recovered": MemberRecovered,
        "leadership.moved": LeadershipMoved,
        "learner.promoted": LearnerPromoted,
        "voter.removed": VoterRemoved,
        "drain.started": DrainStarted,
        "drain.finished": DrainFinished,
        "registry.changed": RegistryChanged,
    }


def test_a_later_subsystem_adds_its_kind_and_cannot_take_a_used_one():
    @register
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class BackendEjected(NodeEvent):
        kind: ClassVar[str] = "backend.ejected"
        healthy: int

    try:
        assert EVENT_KINDS["backend.ejected"] is BackendEjected
        assert BackendEjected(**STAMP, healthy=1).to_dict()["kind"] == "backend.ejected"

        @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
        class Impostor(NodeEvent):
            kind: ClassVar[str] = "backend.ejected"

        with pytest.raises(ValueError, match="already BackendEjected"):
            register(Impostor)
    finally:
        del EVENT_KINDS["backend.ejected"]


@pytest.mark.parametrize("kind", [None, "", "quorum."])
def test_a_kind_must_be_a_full_name(kind):
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Nameless(NodeEvent):
        pass

    if kind is not None:
        Nameless.kind = kind
    with pytest.raises(ValueError, match="kind must be"):
        register(Nameless)
    assert Nameless not in EVENT_KINDS.values()


def test_to_dict_is_the_contract_shape_and_json_ready():
    event = MembershipChanged(
        **STAMP, voters=frozenset({"n3", "n1"}), learners=("n4",), witnesses=()
    )
    as_dict = event.to_dict()
    assert list(as_dict) == ["node", "seq", "time", "kind", "voters", "learners", "witnesses"]
    assert as_dict == {
        **STAMP,
        "kind": "membership.changed",
        "voters": ["n1", "n3"],
        "learners": ["n4"],
        "witnesses": [],
    }
    assert json.loads(json.dumps(as_dict)) == as_dict


def test_every_registered_event_serializes():
    samples = {
        LeaderChanged: {"term": 3, "leader": None, "state": "candidate"},
        LeaderElected: {"term": 3},
        LeaderLost: {"term": 4, "leader": "n2"},
        MembershipChanged: {"voters": ("n1",), "learners": (), "witnesses": ()},
        MemberStateChanged: {
            "member": "n2",
            "state": "dead",
            "incarnation": 5,
            "previous": "alive",
        },
        SnapshotTaken: {"index": 100, "term": 2},
        SnapshotInstalled: {"index": 90, "term": 2},
        NodeStarting: {},
        NodeStopping: {},
        QuorumLost: {"reachable": ("n1",), "unreachable": ("n2", "n3")},
        QuorumRegained: {"reachable": ("n1", "n2"), "unreachable": ("n3",)},
        PartitionDetected: {"reachable": ("n1", "n2"), "unreachable": ("n3",)},
        PartitionHealed: {"reachable": ("n1", "n2", "n3"), "unreachable": ()},
        MemberSuspect: {"member": "n2"},
        MemberFailed: {"member": "n2", "reason": "unreachable from n1"},
        MemberRecovered: {"member": "n2"},
        LeadershipMoved: {"leader": "n2", "reason": "leader n1 is draining"},
        LearnerPromoted: {"member": "n4", "reason": "replaces failed voter n3"},
        VoterRemoved: {"member": "n3", "reason": "failed 10.0 s ago"},
        DrainStarted: {"reason": "SIGTERM"},
        DrainFinished: {"in_flight": 0},
        RegistryChanged: {"version": 2, "services": (("api", (("b1", "tcp://h:1", 2, False),)),)},
    }
    assert set(samples) == set(EVENT_KINDS.values())
    for cls, extra in samples.items():
        as_dict = cls(**STAMP, **extra).to_dict()
        assert as_dict["kind"] == cls.kind
        assert set(as_dict) - {"update", "metadata"} == {*STAMP, "kind", *extra}
        json.dumps(as_dict)


def test_events_are_immutable_and_hashable():
    event = LeaderChanged(**STAMP, term=3, leader="n2", state="follower")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.term = 4
    assert event == LeaderChanged(**STAMP, term=3, leader="n2", state="follower")
    assert hash(event) == hash(LeaderChanged(**STAMP, term=3, leader="n2", state="follower"))
    membership = MembershipChanged(**STAMP, voters=["n2", "n1"], learners=set(), witnesses=())
    assert membership.voters == ("n1", "n2")
    hash(membership)


def test_member_metadata_is_a_read_only_copy():
    metadata = {"role": "voter", "weight": 1}
    event = MemberStateChanged(
        **STAMP, member="n2", state="alive", incarnation=1, previous=None, metadata=metadata
    )
    metadata["weight"] = 9
    assert event.metadata == {"role": "voter", "weight": 1}
    with pytest.raises(TypeError):
        event.metadata["weight"] = 2  # type: ignore[index]
    assert event.to_dict()["metadata"] == {"role": "voter", "weight": 1}
    hash(event)


def test_events_are_built_by_keyword_only():
    with pytest.raises(TypeError):
        LeaderElected("n1", 1, 0.0, 3)  # type: ignore[misc]
    with pytest.raises(TypeError):
        LeaderElected(**STAMP)  # type: ignore[call-arg]


def test_member_states_name_the_state_before_each_swim_event():
    states = MemberStates()
    story = [
        (EventKind.JOIN, 1, "alive", None, False),
        (EventKind.SUSPECT, 1, "suspect", "alive", False),
        (EventKind.ALIVE, 2, "alive", "suspect", False),
        (EventKind.UPDATE, 3, "alive", "alive", True),
        (EventKind.SUSPECT, 3, "suspect", "alive", False),
        (EventKind.DEAD, 3, "dead", "suspect", False),
        (EventKind.JOIN, 4, "alive", "dead", False),
        (EventKind.LEAVE, 5, "left", "alive", False),
    ]
    for kind, incarnation, state, previous, update in story:
        fields = states.fields(MemberEvent(kind, "n2", incarnation, {"zone": "a"}))
        assert fields == {
            "member": "n2",
            "state": state,
            "incarnation": incarnation,
            "previous": previous,
            "update": update,
            "metadata": {"zone": "a"},
        }
        MemberStateChanged(**STAMP, **fields)


def test_member_states_track_each_member_apart():
    states = MemberStates()
    states.fields(MemberEvent(EventKind.JOIN, "n2", 1, {}))
    assert states.fields(MemberEvent(EventKind.JOIN, "n3", 1, {}))["previous"] is None
    assert states.fields(MemberEvent(EventKind.DEAD, "n2", 1, {}))["previous"] == "alive"


def test_an_update_keeps_the_state_it_found():
    states = MemberStates()
    states.fields(MemberEvent(EventKind.LEAVE, "n1", 2, {}))
    fields = states.fields(MemberEvent(EventKind.UPDATE, "n1", 3, {"weight": 2}))
    assert (fields["state"], fields["previous"], fields["update"]) == ("left", "left", True)


def test_the_filter_takes_everything_by_default():
    every = KindFilter.of(None)
    assert all(every.matches(kind) for kind in EVENT_KINDS)
    assert every.matches("quorum.lost")


def test_the_filter_takes_names_classes_and_prefixes():
    chosen = KindFilter.of(["leader.", MembershipChanged, "node.stopping"])
    assert {kind for kind in EVENT_KINDS if chosen.matches(kind)} == {
        "leader.changed",
        "leader.elected",
        "leader.lost",
        "membership.changed",
        "node.stopping",
    }
    assert not chosen.matches("leaderless")


def test_the_filter_takes_a_single_kind_whole():
    assert KindFilter.of("leader.elected").exact == {"leader.elected"}
    assert KindFilter.of(LeaderLost).exact == {"leader.lost"}


@pytest.mark.parametrize("kinds", ["leader.elcted", ["leader.elected", "snapshot"], [NodeEvent]])
def test_the_filter_rejects_an_unknown_kind(kinds):
    with pytest.raises(ValueError, match="unknown event kind"):
        KindFilter.of(kinds)


@pytest.mark.parametrize("kinds", [[], [3], ["."]])
def test_the_filter_rejects_what_names_no_kind(kinds):
    with pytest.raises(ValueError):
        KindFilter.of(kinds)
