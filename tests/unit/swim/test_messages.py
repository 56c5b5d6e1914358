"""Wire form of the SWIM messages: lean, round-trips through msgpack, and strict on bad input."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caddy.errors import WireError
from caddy.swim import (
    KINDS,
    Ack,
    Alive,
    Dead,
    Gossip,
    Left,
    MemberRecord,
    MemberState,
    Nack,
    Ping,
    PingReq,
    Suspect,
    Sync,
    from_wire,
    to_wire,
)
from caddy.wire import Codec

UPDATES = (
    Alive("n1", 3, {"role": "voter", "zone": "a", "client_address": "tcp://h:1", "weight": 2}),
    Alive("n2", 0),
    Suspect("n3", 7, "n1"),
    Dead("n4", 1, "n2"),
    Left("n5", 9),
)
MESSAGES = (
    Ping(1),
    Ping(65535, UPDATES),
    Ack(2, UPDATES[:2]),
    PingReq(3, "n9", want_nack=True, updates=UPDATES[2:]),
    PingReq(4, "n9"),
    Nack(5),
    Gossip(UPDATES),
    Sync((MemberRecord("n1", 1, MemberState.SUSPECT, {"zone": "a"}),), reply_wanted=True),
    Sync(tuple(MemberRecord(f"n{i}", i, state) for i, state in enumerate(MemberState))),
)


def through_msgpack(message):
    kind, body = to_wire(message)
    return kind, msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False)


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message):
    kind, body = through_msgpack(message)
    assert kind in KINDS and kind.startswith("swim.")
    assert from_wire(kind, body) == message


def test_idle_probe_traffic_is_lean():
    codec = Codec("demo", "n1")
    ping = len(codec.encode(*to_wire(Ping(300))))
    ack = len(codec.encode(*to_wire(Ack(300))))
    assert ping <= 32 and ack <= 32  # envelope included: ~100 B/s for a ping and an ack per second
    assert to_wire(Ping(300)) == ("swim.ping", {"s": 300})


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("swim.ping", {}),
        ("swim.ping", {"s": "1"}),
        ("swim.ping", {"s": True}),
        ("swim.ping", {"s": -1}),
        ("swim.ack", {"s": 2**40}),
        ("swim.pingreq", {"s": 1}),
        ("swim.pingreq", {"s": 1, "t": ""}),
        ("swim.pingreq", {"s": 1, "t": "n2", "n": 1}),
        ("swim.gossip", {}),
        ("swim.gossip", {"g": [[0, "n1"]]}),
        ("swim.gossip", {"g": [[1, "n1", 2]]}),  # a suspicion without its origin
        ("swim.gossip", {"g": [[3, "n1", 2, "x"]]}),
        ("swim.gossip", {"g": [[9, "n1", 2]]}),
        ("swim.gossip", {"g": [[0, "n1", 2, {"k": [1]}]]}),
        ("swim.gossip", {"g": [[0, "n1", 2, {"k": "x" * 600}]]}),  # metadata over 512 bytes
        ("swim.gossip", {"g": "nope"}),
        ("swim.sync", {}),
        ("swim.sync", {"m": [["n1", 1, 7]]}),
        ("swim.sync", {"m": [["n1", 1, 0]], "r": "yes"}),
        ("swim.nope", {"s": 1}),
        (None, {"s": 1}),
        ("swim.ping", [1]),
    ],
)
def test_malformed_bodies_raise_wire_error(kind, body):
    with pytest.raises(WireError):
        from_wire(kind, body)


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
garbage = st.recursive(
    scalars | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=5)
    ),
    max_leaves=20,
)
plausible_update = st.lists(
    st.sampled_from([0, 1, 2, 3, -1, True]) | garbage, min_size=2, max_size=5
)
plausible_body = st.fixed_dictionaries(
    {},
    optional={
        "s": st.integers(-2, 2**33) | garbage,
        "t": st.text(max_size=3) | garbage,
        "n": st.booleans() | garbage,
        "g": st.lists(plausible_update, max_size=4) | garbage,
        "m": st.lists(st.lists(garbage, max_size=5), max_size=4) | garbage,
        "r": st.booleans() | garbage,
    },
)


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(KINDS) | garbage, body=plausible_body | garbage)
def test_garbage_only_ever_raises_wire_error(kind, body):
    try:
        message = from_wire(kind, body)
    except WireError:
        return
    assert from_wire(*to_wire(message)) == message  # what is accepted is well-formed


ids = st.text(min_size=1, max_size=12)
meta_values = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
metadata = st.dictionaries(st.text(min_size=1, max_size=8), meta_values, max_size=4)
updates = st.one_of(
    st.builds(Alive, ids, st.integers(0, 2**63 - 1), metadata),
    st.builds(Suspect, ids, st.integers(0, 2**63 - 1), ids),
    st.builds(Dead, ids, st.integers(0, 2**63 - 1), ids),
    st.builds(Left, ids, st.integers(0, 2**63 - 1)),
)
update_tuples = st.lists(updates, max_size=4).map(tuple)
messages = st.one_of(
    st.builds(Ping, st.integers(0, 2**32 - 1), update_tuples),
    st.builds(Ack, st.integers(0, 2**32 - 1), update_tuples),
    st.builds(Nack, st.integers(0, 2**32 - 1), update_tuples),
    st.builds(PingReq, st.integers(0, 2**32 - 1), ids, st.booleans(), update_tuples),
    st.builds(Gossip, update_tuples),
    st.builds(
        Sync,
        st.lists(
            st.builds(MemberRecord, ids, st.integers(0, 9), st.sampled_from(MemberState), metadata),
            max_size=4,
        ).map(tuple),
        st.booleans(),
    ),
)


@settings(max_examples=200, deadline=None)
@given(message=messages)
def test_valid_messages_survive_the_wire(message):
    assert from_wire(*through_msgpack(message)) == message
