"""Every decoder of what comes off a socket is total: for any input, a typed value or its declared
error (WireError, RequestError, CommandError) with a short message, never another exception.

Inputs: any msgpack-able value (None, bools, ints of any size, floats with nan and inf, str,
bytes, lists, str-keyed maps), values nested 500-3000 levels deep (beyond what hypothesis's
recursive strategy reaches, and beyond Python's recursion limit), wide containers, valid bodies
of every kind with one place anywhere inside replaced by such a value, and arbitrary bytes.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caddy.bounds import MAX_INT64, MAX_VALUE_DEPTH, describe, value_problem
from caddy.errors import WireError
from caddy.raft.codec import from_wire as raft_from_wire
from caddy.raft.codec import to_wire as raft_to_wire
from caddy.raft.membership import (
    decode_membership,
    encode_membership,
    membership_from_wire,
    membership_to_wire,
)
from caddy.raft.messages import (
    MESSAGE_TYPES,
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
from caddy.replication.commands import (
    Command,
    CommandError,
    KvCommand,
    decode_batch,
    decode_command,
    decode_kv,
    encode_kv,
)
from caddy.replication.kv import KeyValueStore
from caddy.replication.requests import ClientRequest, RequestError, parse_request
from caddy.swim import KINDS as SWIM_KINDS
from caddy.swim import (
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
)
from caddy.swim import from_wire as swim_from_wire
from caddy.swim import to_wire as swim_to_wire
from caddy.wire import (
    BATCH_KIND,
    MAX_BATCH_ITEMS,
    PROTOCOL_VERSION,
    REPLIES_KIND,
    Codec,
    Envelope,
    decode_envelope,
    unpack_batch,
)

LIMIT = 1024 * 1024
MAX_ERROR_CHARS = 300  # what any decoder's error message may run to: no value is ever shown
CODEC = Codec(cluster="test", sender="n1", max_message_bytes=LIMIT)

# ----- values ----------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: far beyond what msgpack carries, as a Python caller may pass
    | st.floats()  # nan and inf included
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
packable_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)


def trees(leaves: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=25,
    )


def nest(depth: int, shape: str, leaf: Any) -> Any:
    """`leaf` inside `depth` lists, maps or both in turn, built without recursion."""
    value = leaf
    for level in range(depth):
        as_map = shape == "map" or (shape == "mixed" and level % 2)
        value = {"k": value} if as_map else [value]
    return value


def nest_packed(depth: int, shape: str, leaf: bytes = b"\xc0") -> bytes:
    """The msgpack bytes of `nest(depth, shape, ...)`, written by hand: msgpack's packer refuses
    more than 511 levels, its unpacker takes 1024, a peer may send any."""
    parts = []
    for level in range(depth):
        as_map = shape == "map" or (shape == "mixed" and level % 2)
        parts.append(b"\x81\xa1k" if as_map else b"\x91")
    return b"".join(parts) + leaf


shapes = st.sampled_from(["list", "map", "mixed"])
deep_values = st.builds(nest, st.integers(500, 3000), shapes, scalars)
just_too_deep = st.builds(
    nest, st.integers(MAX_VALUE_DEPTH + 1, MAX_VALUE_DEPTH + 3), shapes, scalars
)
wide_lists = st.builds(lambda n, leaf: [leaf] * n, st.integers(1000, 20_000), scalars)
wide_maps = st.builds(lambda n: {f"k{i}": i for i in range(n)}, st.integers(1000, 5000))
wide_values = wide_lists | wide_maps
any_values = trees(scalars) | deep_values | just_too_deep | wide_values
packable_values = trees(packable_scalars)


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


# ----- the harness -----------------------------------------------------------------------------


def total(call, errors, expected_type=None):
    """Run `call`: it returns a value (of `expected_type`) or raises one of `errors` with a short
    message. Anything else (RecursionError, TypeError, ...) fails the test."""
    try:
        result = call()
    except errors as error:
        assert len(str(error)) <= MAX_ERROR_CHARS, str(error)[:500]
        return None
    if expected_type is not None:
        assert isinstance(result, expected_type), type(result)
    return result


MAX_REPLACE_DEPTH = 64  # deeper than any decoder's own structure; a drawn value may nest 1000s


def replace_somewhere(
    data: st.DataObject, value: Any, replacement: st.SearchStrategy, depth: int = 0
) -> Any:
    """`value` with one place inside it (itself, a field, an item, ... at any depth up to
    MAX_REPLACE_DEPTH) replaced by a drawn value: the mutations that reach every nested decoder.
    (Unbounded, a drawn value nested thousands deep could take this walk past Python's
    recursion limit.)"""
    if (
        depth >= MAX_REPLACE_DEPTH
        or data.draw(st.booleans())
        or not isinstance(value, list | tuple | dict)
        or not value
    ):
        return data.draw(replacement)
    if isinstance(value, dict):
        key = data.draw(st.sampled_from(sorted(value, key=repr)))
        return {**value, key: replace_somewhere(data, value[key], replacement, depth + 1)}
    position = data.draw(st.integers(0, len(value) - 1))
    items = list(value)
    items[position] = replace_somewhere(data, items[position], replacement, depth + 1)
    return items


def through_msgpack(body: Any) -> Any:
    return msgpack.unpackb(pack(body), raw=False)


# ----- valid samples of every kind -------------------------------------------------------------

MEMBERSHIP = Membership(frozenset({"n1", "n2"}), frozenset({"n4"}), frozenset({"n3"}))
RAFT_SAMPLES = {
    message.kind: message
    for message in (
        AppendEntries(
            3,
            "n1",
            4,
            2,
            (
                Entry(5, 2, EntryKind.COMMAND, b"x" * 100),
                Entry(6, 3, EntryKind.NOOP, b""),
                Entry(7, 3, EntryKind.CONFIG, encode_membership(MEMBERSHIP)),
            ),
            4,
        ),
        AppendResponse(3, "n2", False, 4, 2, 2),
        RequestVote(4, "n3", 9, 3, True, False),
        VoteResponse(4, "n2", True, True),
        Heartbeat(3, "n1", 7, 12),
        HeartbeatResponse(3, "n2", 12),
        InstallSnapshot(3, "n1", SnapshotMeta(40, 2, MEMBERSHIP), 64, b"chunk", False),
        SnapshotResponse(3, "n2", 40, 69),
        TimeoutNow(3, "n1"),
    )
}
assert set(RAFT_SAMPLES) == {cls.kind for cls in MESSAGE_TYPES}, "a raft kind has no sample"
RAFT_TYPES = {cls.kind: cls for cls in MESSAGE_TYPES}

UPDATES = (
    Alive("n1", 3, {"role": "voter", "zone": "a", "weight": 2, "ratio": 0.5, "off": None}),
    Suspect("n3", 7, "n1"),
    Dead("n4", 1, "n2"),
    Left("n5", 9),
)
SWIM_SAMPLES = dict(
    swim_to_wire(message)
    for message in (
        Ping(1, UPDATES),
        Ack(2, UPDATES),
        PingReq(3, "n9", want_nack=True, updates=UPDATES),
        Nack(5, UPDATES),
        Gossip(UPDATES),
        Sync((MemberRecord("n1", 1, MemberState.SUSPECT, {"zone": "a"}),), reply_wanted=True),
    )
)
assert set(SWIM_SAMPLES) == set(SWIM_KINDS), "a swim kind has no sample"
SWIM_TYPES = (Ping, Ack, PingReq, Nack, Gossip, Sync)

SESSION = {"client": "c1", "seq": 3, "ack": 2}
KV_SAMPLES = {
    "kv.get": {"key": "k"},
    "kv.put": {"key": "k", "value": {"a": [1, 2.5, "x", b"y", None, True]}, **SESSION},
    "kv.delete": {"key": "k", **SESSION},
    "kv.cas": {"key": "k", "expected": [1, {"b": 2}], "new": "v", **SESSION},
}

ENVELOPE = [PROTOCOL_VERSION, "test", "n1", "raft.append", 7, 0, {"term": 1}]


def raw_envelope(position: int, raw: bytes) -> bytes:
    """A 7-field envelope with field `position` given as raw msgpack bytes (any depth)."""
    fields = [pack(field) for field in ENVELOPE]
    fields[position] = raw
    return b"\x97" + b"".join(fields)


# ----- the envelope ----------------------------------------------------------------------------


def check_envelope(envelope: Envelope | None) -> None:
    if envelope is None:
        return
    assert type(envelope.cluster) is str and type(envelope.sender) is str
    assert type(envelope.kind) is str and 0 < len(envelope.kind) <= 128
    assert type(envelope.request_id) is int and envelope.request_id >= 0
    assert type(envelope.body) is dict


@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=600))
def test_decode_envelope_of_arbitrary_bytes(data):
    check_envelope(total(lambda: decode_envelope(data, LIMIT), WireError, Envelope))


@settings(max_examples=300, deadline=None)
@given(st.lists(packable_values, max_size=9))
def test_decode_envelope_of_any_packed_list(fields):
    frame = pack(fields)
    check_envelope(total(lambda: decode_envelope(frame, LIMIT), WireError, Envelope))


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 6), replacement=packable_values)
def test_decode_envelope_with_any_one_field(position, replacement):
    fields = list(ENVELOPE)
    fields[position] = replacement
    frame = pack(fields)
    check_envelope(total(lambda: CODEC.decode(frame), WireError, Envelope))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(0, 6), depth=st.integers(500, 3000), shape=shapes)
def test_decode_envelope_with_a_deep_field(position, depth, shape):
    frame = raw_envelope(position, nest_packed(depth, shape))
    check_envelope(total(lambda: CODEC.decode(frame), WireError, Envelope))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_decode_envelope_of_mutated_valid_frames(data):
    frame = bytearray(CODEC.encode("raft.append", raft_to_wire(RAFT_SAMPLES["raft.append"])))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(frame) - 1))
        frame[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    mutated = bytes(frame[:cut])
    check_envelope(total(lambda: CODEC.decode(mutated), WireError, Envelope))


# ----- raft ------------------------------------------------------------------------------------


def check_raft(kind: str, body: Any) -> None:
    expected = RAFT_TYPES.get(kind) if type(kind) is str else None
    message = total(lambda: raft_from_wire(kind, body), WireError, expected)
    if message is not None:  # a typed message is in range everywhere
        for name in ("term", "index", "prev_index", "prev_term", "commit"):
            value = getattr(message, name, 0)
            assert type(value) is int and 0 <= value <= MAX_INT64


@settings(max_examples=600, deadline=None)
@given(kind=st.sampled_from(sorted(RAFT_SAMPLES)), data=st.data())
def test_raft_from_wire_with_anything_anywhere(kind, data):
    body = replace_somewhere(data, raft_to_wire(RAFT_SAMPLES[kind]), any_values)
    check_raft(kind, body)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(RAFT_SAMPLES)) | any_values, body=any_values)
def test_raft_from_wire_with_any_kind_and_body(kind, body):
    check_raft(kind, body)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(sorted(RAFT_SAMPLES)),
    field_values=st.dictionaries(
        st.sampled_from(["term", "sender", "index", "entries", "meta", "data", "round"]), any_values
    ),
)
def test_raft_from_wire_with_any_fields(kind, field_values):
    check_raft(kind, {**raft_to_wire(RAFT_SAMPLES[kind]), **field_values})


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200) | st.builds(pack, packable_values))
def test_decode_membership_of_any_bytes(data):
    total(lambda: decode_membership(data), WireError, Membership)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_membership_from_wire_with_anything_anywhere(data):
    body = replace_somewhere(data, membership_to_wire(MEMBERSHIP), any_values)
    total(lambda: membership_from_wire(body), WireError, Membership)


# ----- swim ------------------------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(kind=st.sampled_from(sorted(SWIM_SAMPLES)), data=st.data())
def test_swim_from_wire_with_anything_anywhere(kind, data):
    body = replace_somewhere(data, SWIM_SAMPLES[kind], any_values)
    total(lambda: swim_from_wire(kind, body), WireError, SWIM_TYPES)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(SWIM_SAMPLES)) | any_values, body=any_values)
def test_swim_from_wire_with_any_kind_and_body(kind, body):
    total(lambda: swim_from_wire(kind, body), WireError, SWIM_TYPES)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(SWIM_SAMPLES)), data=st.data())
def test_swim_metadata_of_any_shape(kind, data):
    """Metadata is the one free-form part of gossip: any map, of any values, is refused or kept
    as a flat map of short keys to scalars."""
    metadata = data.draw(st.dictionaries(st.text(max_size=80), any_values, max_size=6) | any_values)
    body = (
        {"g": [[0, "n1", 1, metadata]]} if kind != "swim.sync" else {"m": [["n1", 1, 0, metadata]]}
    )
    message = total(lambda: swim_from_wire(kind, body), WireError, SWIM_TYPES)
    if message is not None:
        item = message.records[0] if isinstance(message, Sync) else message.updates[0]
        for key, value in item.metadata.items():
            assert type(key) is str and 0 < len(key) <= 64
            assert value is None or type(value) in (str, int, float, bool)
            assert type(value) is not float or math.isfinite(value)


# ----- key-value requests, batches and log commands --------------------------------------------


def check_request(kind: Any, body: Any) -> None:
    request = total(lambda: parse_request(kind, body), RequestError, ClientRequest)
    if request is None or request.is_read:
        return
    # What the leader would propose is within the bounds: every replica decodes and applies it.
    command = decode_kv(request.payload)
    for value in (command.value, command.expected):
        assert value_problem(value) is None
    result = KeyValueStore().apply(request.payload)
    assert result["ok"] is True


@settings(max_examples=600, deadline=None)
@given(kind=st.sampled_from(sorted(KV_SAMPLES)), data=st.data())
def test_parse_request_with_anything_anywhere(kind, data):
    check_request(kind, replace_somewhere(data, KV_SAMPLES[kind], any_values))


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(KV_SAMPLES)) | any_values, body=any_values)
def test_parse_request_with_any_kind_and_body(kind, body):
    check_request(kind, body)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_unpack_batch_never_raises(data):
    kind = data.draw(st.sampled_from([BATCH_KIND, REPLIES_KIND, "kv.put"]))
    field = "requests" if kind != REPLIES_KIND else "replies"
    good = [[1, "kv.put", KV_SAMPLES["kv.put"]], [2, "kv.get", {"key": "k"}]]
    items = data.draw(
        st.builds(lambda: good)
        | st.lists(any_values, max_size=4)
        | st.lists(st.builds(lambda v: [1, "kv.get", v], any_values), max_size=3)
        | st.builds(lambda n: [[i, "kv.get", {}] for i in range(n)], st.integers(0, 600))
        | any_values
    )
    body = replace_somewhere(data, {field: items}, any_values)
    if not isinstance(body, dict):
        body = {field: body}
    envelopes, dropped = unpack_batch(Envelope("test", "c1", kind, body, 0))
    assert isinstance(dropped, Counter) and len(envelopes) <= MAX_BATCH_ITEMS
    for item in envelopes:
        check_envelope(item)
        assert item.kind not in (BATCH_KIND, REPLIES_KIND)
        check_request(item.kind, item.body)


commands = st.builds(
    lambda fields: pack(fields),
    st.lists(packable_values, min_size=3, max_size=6)
    | st.tuples(st.just(2), st.integers(0, 2**40), st.lists(packable_values, max_size=3)),
)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200) | commands | st.builds(pack, packable_values))
def test_log_command_decoders_of_any_bytes(data):
    total(lambda: decode_command(data), CommandError, Command)
    batch = total(lambda: decode_batch(data), CommandError, tuple)
    if batch is not None:
        log_time_ms, items = batch
        assert type(log_time_ms) is int and log_time_ms >= 0
        assert all(isinstance(item, Command | CommandError) for item in items)
    total(lambda: decode_kv(data), CommandError, KvCommand)
    assert isinstance(KeyValueStore().apply(data), dict)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    op=st.sampled_from(["put", "cas", "delete"]) | any_values,
    slot=st.integers(1, 3),
    depth=st.integers(MAX_VALUE_DEPTH - 2, 1100),
    shape=shapes,
)
def test_decode_kv_and_apply_of_deep_payloads(op, slot, depth, shape):
    """A log entry written by hand (a hostile or broken leader) with a deep key, value or cas
    guard: refused as invalid, never a RecursionError, never applied."""
    try:
        packed_op = pack(op)
    except (TypeError, ValueError, OverflowError):  # too deep or too large for the packer
        packed_op = pack("put")
    fields = [packed_op, pack("k"), b"\xc0", b"\xc0"]
    fields[slot] = nest_packed(depth, shape)
    payload = b"\x94" + b"".join(fields)
    command = total(lambda: decode_kv(payload), CommandError, KvCommand)
    if command is not None:
        assert depth <= MAX_VALUE_DEPTH
    store = KeyValueStore()
    result = store.apply(payload)
    assert isinstance(result, dict)
    if depth > MAX_VALUE_DEPTH:
        assert result["ok"] is False and len(store) == 0


@settings(max_examples=300, deadline=None)
@given(
    op=st.sampled_from(["put", "cas", "delete"]) | any_values,
    key=st.text(max_size=5) | any_values,
    value=any_values,
    expected=any_values,
)
def test_encode_kv_of_anything(op, key, value, expected):
    """What the leader encodes (from a parsed request) is bounded, or refused."""
    payload = total(lambda: encode_kv(op, key, value, expected), CommandError, bytes)
    if payload is not None:
        assert isinstance(KeyValueStore().apply(payload), dict)


# ----- every frame, end to end -----------------------------------------------------------------


def decode_like_a_node(frame: bytes) -> None:
    """What a node does with a frame from either port: the envelope, then the body's decoder."""
    envelope = total(lambda: CODEC.decode(frame), WireError, Envelope)
    if envelope is None:
        return
    if envelope.kind in (BATCH_KIND, REPLIES_KIND):
        items, _ = unpack_batch(envelope)
        for item in items:
            check_request(item.kind, item.body)
    elif envelope.kind.startswith("raft."):
        check_raft(envelope.kind, envelope.body)
    elif envelope.kind.startswith("swim."):
        total(lambda: swim_from_wire(envelope.kind, envelope.body), WireError, SWIM_TYPES)
    elif envelope.kind.startswith("kv."):
        check_request(envelope.kind, envelope.body)


every_kind = st.sampled_from(
    sorted(RAFT_SAMPLES) + sorted(SWIM_SAMPLES) + sorted(KV_SAMPLES) + [BATCH_KIND]
)


def sample_body(kind: str) -> dict:
    if kind in RAFT_SAMPLES:
        return raft_to_wire(RAFT_SAMPLES[kind])
    if kind in SWIM_SAMPLES:
        return SWIM_SAMPLES[kind]
    if kind in KV_SAMPLES:
        return KV_SAMPLES[kind]
    return {"requests": [[1, "kv.put", KV_SAMPLES["kv.put"]], [2, "kv.get", {"key": "k"}]]}


@settings(max_examples=600, deadline=None)
@given(kind=every_kind, data=st.data())
def test_every_kind_end_to_end_with_anything_anywhere(kind, data):
    body = through_msgpack(sample_body(kind))
    mutated = replace_somewhere(data, body, packable_values)
    try:
        frame = CODEC.encode(kind, mutated if isinstance(mutated, dict) else {"x": mutated})
    except WireError:
        return  # not encodable (e.g. a lone surrogate): no peer can send it either
    decode_like_a_node(frame)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=every_kind, depth=st.integers(MAX_VALUE_DEPTH - 1, 1100), shape=shapes, data=st.data())
def test_every_kind_end_to_end_with_a_deep_value_anywhere(kind, depth, shape, data):
    """A deep value spliced in as raw msgpack (no packer would write it) at a random place."""
    marker = "\x00splice\x00"
    body = replace_somewhere(data, through_msgpack(sample_body(kind)), st.just(marker))
    if not isinstance(body, dict):
        body = {"x": marker}
    packed = pack([PROTOCOL_VERSION, "test", "n1", kind, 1, 0, body])
    frame = packed.replace(pack(marker), nest_packed(depth, shape), 1)
    decode_like_a_node(frame)


# ----- targeted cases --------------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 1, 2, 3, 4, 5])  # version, ..., flags
def test_a_1kb_frame_nesting_an_envelope_field_1000_deep_is_a_short_wire_error(position):
    frame = raw_envelope(position, nest_packed(1000, "list"))
    assert len(frame) < 1100
    with pytest.raises(WireError) as raised:
        CODEC.decode(frame)
    assert len(str(raised.value)) < 100


def test_the_deep_version_error_names_the_field_and_only_the_type():
    with pytest.raises(WireError, match=r"^unsupported protocol version \(a list of 1 items\)$"):
        CODEC.decode(raw_envelope(0, nest_packed(1000, "list")))


def test_a_deep_cas_expected_is_refused_before_it_is_proposed_and_at_apply():
    deep = nest(MAX_VALUE_DEPTH + 1, "list", 1)
    body = {"key": "k", "expected": deep, "new": 1, **SESSION}
    with pytest.raises(RequestError, match="expected: nested deeper than 32 levels"):
        parse_request("kv.cas", body)
    with pytest.raises(RequestError, match="value: nested deeper"):
        parse_request("kv.cas", {**body, "expected": None, "new": deep})
    payload = b"\x94" + pack("cas") + pack("k") + pack(1) + nest_packed(1000, "mixed")
    with pytest.raises(CommandError, match="nested deeper"):
        decode_kv(payload)
    store = KeyValueStore()
    assert store.apply(payload)["ok"] is False and len(store) == 0


def test_a_value_at_the_depth_bound_is_stored_and_compared():
    at_bound = nest(MAX_VALUE_DEPTH, "mixed", "leaf")
    store = KeyValueStore()
    put = parse_request("kv.put", {"key": "k", "value": at_bound, **SESSION})
    assert store.apply(put.payload) == {"ok": True, "value": None}
    cas = parse_request("kv.cas", {"key": "k", "expected": at_bound, "new": 2, **SESSION})
    assert store.apply(cas.payload) == {"ok": True, "value": True}
    assert store.read("k") == 2


@pytest.mark.parametrize("field", ["term", "prev_index", "commit"])
@pytest.mark.parametrize(
    "bad", [math.nan, math.inf, 1.0, True, False, 2**63, 2**64 - 1, 10**40, -1]
)
def test_raft_numbers_are_exact_ints_in_range(field, bad):
    body = raft_to_wire(RAFT_SAMPLES["raft.append"])
    with pytest.raises(WireError, match=field):
        raft_from_wire("raft.append", {**body, field: bad})


def test_a_bool_or_float_index_in_an_entry_is_refused():
    body = raft_to_wire(RAFT_SAMPLES["raft.append"])
    for bad in (True, 5.0, math.nan):
        entries = [[bad, 2, 1, b"x"]] + body["entries"][1:]
        with pytest.raises(WireError, match=r"entries\[0\]\.index"):
            raft_from_wire("raft.append", {**body, "entries": entries})


def test_swim_and_kv_numbers_are_exact_ints():
    for bad in (True, 1.0, math.nan, 2**64):
        with pytest.raises(WireError, match="s must be an int"):
            swim_from_wire("swim.ping", {"s": bad})
        with pytest.raises(RequestError):
            parse_request("kv.put", {"key": "k", "value": 1, **SESSION, "seq": bad})


@pytest.mark.parametrize(
    "call",
    [
        lambda name: CODEC.decode(pack([PROTOCOL_VERSION, "test", name, "raft.vote", 0, 0, {}])),
        lambda name: raft_from_wire(
            "raft.vote", {**raft_to_wire(RAFT_SAMPLES["raft.vote"]), "sender": name}
        ),
        lambda name: membership_from_wire({"voters": [name], "learners": [], "witnesses": []}),
        lambda name: swim_from_wire("swim.pingreq", {"s": 1, "t": name}),
        lambda name: swim_from_wire("swim.gossip", {"g": [[1, "n1", 1, name]]}),
        lambda name: swim_from_wire("swim.gossip", {"g": [[0, "n1", 1, {name: 1}]]}),
        lambda name: parse_request("kv.put", {"key": "k", "value": 1, **SESSION, "client": name}),
    ],
    ids=["envelope sender", "raft sender", "voter", "target", "origin", "metadata key", "client"],
)
def test_an_oversized_name_is_refused_without_being_shown(call):
    name = "x" * 100_000
    with pytest.raises((WireError, RequestError)) as raised:
        call(name)
    assert "xxxxxxxxxx" not in str(raised.value) and len(str(raised.value)) < MAX_ERROR_CHARS


def test_a_huge_metadata_string_or_map_is_refused_cheaply():
    for metadata in ({"zone": "z" * 1_000_000}, {f"k{i}": i for i in range(100_000)}):
        with pytest.raises(WireError, match="metadata"):
            swim_from_wire("swim.gossip", {"g": [[0, "n1", 1, metadata]]})


def test_describe_is_short_for_anything():
    for value in (
        nest(5000, "list", 1),
        "x" * 10**6,
        b"x" * 10**6,
        10**5000,
        math.nan,
        {"a": nest(5000, "map", 1)},
        object(),
        "\x00" * 20,
    ):
        assert len(describe(value)) <= 80


def test_value_problem_walks_a_cycle_no_deeper_than_the_bound():
    cycle: list = []
    cycle.append(cycle)
    assert value_problem(cycle) == "nested deeper than 32 levels"
    assert value_problem({1: "int key"}) == "a map key is not a str or bytes"
    assert "is not a msgpack value" in value_problem([{1, 2}])
    assert value_problem([[1] * 100_000, {"a": {"b": b"c"}}]) is None
