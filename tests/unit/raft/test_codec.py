"""Wire codec: every message round-trips; anything malformed raises WireError and nothing else."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caddy.errors import WireError
from caddy.raft.codec import from_wire, to_wire
from caddy.raft.membership import encode_membership
from caddy.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    RequestVote,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)
from caddy.raft.types import Entry, EntryKind, Membership, SnapshotMeta
from tests.strategies import msgpack_values

MEMBERSHIP = Membership(frozenset({"a", "b"}), frozenset({"l"}), frozenset({"w"}))
SAMPLES = [
    AppendEntries(
        3,
        "a",
        4,
        2,
        (
            Entry(5, 2, EntryKind.COMMAND, b"x"),
            Entry(6, 3, EntryKind.NOOP, b""),
            Entry(7, 3, EntryKind.CONFIG, encode_membership(MEMBERSHIP)),
        ),
        4,
    ),
    AppendResponse(3, "b", False, 4, 2, 2),
    RequestVote(4, "c", 9, 3, True, False),
    VoteResponse(4, "b", True, True),
    Heartbeat(3, "a", 7, 12),
    HeartbeatResponse(3, "b", 12),
    InstallSnapshot(3, "a", SnapshotMeta(40, 2, MEMBERSHIP), 64, b"chunk", False),
    SnapshotResponse(3, "b", 40, 69),
    TimeoutNow(3, "a"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.kind)
def test_every_message_round_trips_through_msgpack(message):
    body = msgpack.unpackb(msgpack.packb(to_wire(message), use_bin_type=True), raw=False)
    assert from_wire(message.kind, body) == message


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.kind)
def test_each_missing_field_is_a_wire_error(message):
    body = to_wire(message)
    for name in body:
        broken = {key: value for key, value in body.items() if key != name}
        with pytest.raises(WireError, match=name):
            from_wire(message.kind, broken)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.kind)
def test_each_mistyped_field_is_a_wire_error(message):
    body = to_wire(message)
    for name, value in body.items():
        for wrong in (None, True, -1, "7", b"7", 1.5, [], {}):
            if type(wrong) is type(value):
                continue  # same type: possibly valid (an empty entry list, another id...)
            with pytest.raises(WireError):
                from_wire(message.kind, {**body, name: wrong})


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("raft.nope", {}),
        (7, {}),
        ("raft.append", []),
        ("raft.append", {**to_wire(SAMPLES[0]), "entries": [[5, 2, 1]]}),
        ("raft.append", {**to_wire(SAMPLES[0]), "entries": [[5, 2, 9, b""]]}),
        ("raft.append", {**to_wire(SAMPLES[0]), "entries": [[6, 2, 1, b""]]}),  # gap
        ("raft.append", {**to_wire(SAMPLES[0]), "entries": [[5, 4, 1, b""]]}),  # term > msg
        ("raft.append", {**to_wire(SAMPLES[0]), "entries": [[5, 1, 1, b""]]}),  # < prev_term
        ("raft.append", {**to_wire(SAMPLES[0]), "entries": [[5, 2, 2, b"\xc1"]]}),  # config
        ("raft.append", {**to_wire(SAMPLES[0]), "prev_term": 9}),
        ("raft.append", {**to_wire(SAMPLES[0]), "sender": ""}),
        ("raft.append", {**to_wire(SAMPLES[0]), "sender": "x" * 1000}),
        (
            "raft.snapshot",
            {**to_wire(SAMPLES[6]), "meta": {"index": 1, "term": 1, "membership": {}}},
        ),
        (
            "raft.snapshot",
            {
                **to_wire(SAMPLES[6]),
                "meta": {
                    "index": 1,
                    "term": 1,
                    "membership": {"voters": ["a"], "learners": ["a"], "witnesses": []},
                },
            },
        ),
    ],
)
def test_malformed_bodies_are_wire_errors(kind, body):
    with pytest.raises(WireError):
        from_wire(kind, body)


wire_values = msgpack_values()
KINDS = [message.kind for message in SAMPLES]


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(KINDS) | st.text(max_size=12), body=wire_values)
def test_garbage_raises_only_wire_error(kind, body):
    try:
        from_wire(kind, body)
    except WireError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(0, len(SAMPLES) - 1),
    data=st.data(),
)
def test_valid_bodies_with_one_field_replaced_decode_or_raise_wire_error(index, data):
    message = SAMPLES[index]
    body = to_wire(message)
    name = data.draw(st.sampled_from(sorted(body)))
    body[name] = data.draw(wire_values)
    try:
        decoded = from_wire(message.kind, body)
    except WireError:
        return
    assert type(decoded) is type(message)


def test_a_snapshots_membership_keeps_the_addresses_of_added_nodes():
    """A node that learns the membership from a snapshot learns where added members are."""
    membership = Membership(frozenset({"a", "n9"}), addresses=(("n9", "tcp://10.0.0.9:7109"),))
    message = InstallSnapshot(3, "a", SnapshotMeta(40, 2, membership), 0, b"", True)
    body = msgpack.unpackb(msgpack.packb(to_wire(message), use_bin_type=True), raw=False)
    assert from_wire(message.kind, body).meta.membership.addresses == membership.addresses
