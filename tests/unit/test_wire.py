"""The wire envelope: round trips, limits, compression, and that bad input only raises WireError."""

import random
import zlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caddy.errors import WireError
from caddy.wire import PROTOCOL_VERSION, Codec, decode_envelope, require_fields
from tests.strategies import msgpack_values as msgpack_values_strategy

CODEC = Codec(cluster="demo", sender="n1", max_message_bytes=64 * 1024, compress_threshold=256)


def frame(*fields):
    return msgpack.packb(list(fields), use_bin_type=True)


def test_round_trip_keeps_every_field():
    body = {"term": 3, "entries": [b"\x00\x01", "x"], "ok": True, "none": None, "f": 1.5}
    envelope = CODEC.decode(CODEC.encode("raft.append", body, request_id=42))
    assert (envelope.cluster, envelope.sender, envelope.kind) == ("demo", "n1", "raft.append")
    assert envelope.request_id == 42
    assert envelope.body == body


def test_large_bodies_are_compressed_and_small_ones_are_not():
    large = {"data": "a" * 10_000}
    packed = CODEC.encode("raft.append", large)
    assert len(packed) < 1000
    assert CODEC.decode(packed).body == large
    small = CODEC.encode("raft.append", {"a": 1})
    assert msgpack.unpackb(small)[5] == 0


def test_compression_off_sends_plain_bodies():
    plain = Codec(cluster="demo", sender="n1", compress_threshold=None)
    packed = plain.encode("raft.append", {"data": "a" * 10_000})
    assert len(packed) > 10_000
    assert CODEC.decode(packed).body == {"data": "a" * 10_000}


def test_an_incompressible_body_is_sent_as_it_is_and_fits_up_to_the_limit():
    codec = Codec(cluster="demo", sender="n1", max_message_bytes=64 * 1024, compress_threshold=256)
    room = 64 * 1024 - len(codec.encode("raft.append", {"data": b""})) - 1  # bin16, not bin8
    noise = random.Random(7).randbytes(room)
    packed = codec.encode("raft.append", {"data": noise})  # zlib would make it larger
    assert len(packed) == 64 * 1024
    assert msgpack.unpackb(packed)[5] == 0
    assert codec.decode(packed).body == {"data": noise}


def test_encode_refuses_an_oversized_message():
    with pytest.raises(WireError, match="limit"):
        Codec(cluster="demo", sender="n1", max_message_bytes=100, compress_threshold=None).encode(
            "k.k", {"data": "x" * 200}
        )


def test_encode_refuses_unencodable_values():
    with pytest.raises(WireError, match="cannot encode"):
        CODEC.encode("k.k", {"bad": object()})


def test_foreign_cluster_is_rejected():
    other = Codec(cluster="other", sender="n9")
    with pytest.raises(WireError, match="foreign cluster"):
        CODEC.decode(other.encode("raft.append", {}))


VALID = [PROTOCOL_VERSION, "demo", "n1", "raft.append", 0, 0, {}]


@pytest.mark.parametrize(
    "position, value, message",
    [
        (0, 99, "version"),
        (0, True, "version"),
        (0, "1", "version"),
        (1, "", "cluster"),
        (1, 7, "cluster"),
        (2, None, "sender"),
        (2, "x" * 500, "sender"),
        (3, b"raw", "kind"),
        (4, -1, "request id"),
        (4, "1", "request id"),
        (4, False, "request id"),
        (5, 0x80, "flags"),
        (5, 1, "compressed body is not bytes"),
        (6, [1, 2], "body is not a map"),
        (6, "text", "body is not a map"),
    ],
)
def test_each_malformed_field_is_named(position, value, message):
    fields = list(VALID)
    fields[position] = value
    with pytest.raises(WireError, match=message):
        CODEC.decode(frame(*fields))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "not msgpack"),
        (b"\xc1", "not msgpack"),
        (frame(*VALID)[:-3], "not msgpack"),
        (frame(*VALID) + b"\x00", "not msgpack"),
        (msgpack.packb({"a": 2}), "not a list"),
        (frame(*VALID[:6]), "7 fields"),
        (msgpack.packb([1, "demo", "n1", "k.k", 0, 0, {(1, 2): 3}]), "not msgpack"),
        (frame(*VALID[:5], 1, zlib.compress(b"\xc1")), "not msgpack"),
        (frame(*VALID[:5], 1, b"not zlib"), "corrupt compressed"),
        (frame(*VALID[:5], 1, zlib.compress(msgpack.packb({"a": 1}))[:-4]), "truncated"),
        (frame(*VALID[:5], 1, zlib.compress(msgpack.packb({"a": "b" * 200_000}))), "inflates"),
        (b"x" * 70_000, "over the"),
    ],
)
def test_malformed_frames_raise_wire_error(data, message):
    with pytest.raises(WireError, match=message):
        CODEC.decode(data)


def test_decode_refuses_non_bytes():
    with pytest.raises(WireError):
        decode_envelope("text", 1000)  # type: ignore[arg-type]


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_ever_raise_wire_error(data):
    try:
        envelope = CODEC.decode(data)
    except WireError:
        return
    assert envelope.cluster == "demo"


msgpack_values = msgpack_values_strategy()


@settings(max_examples=300, deadline=None)
@given(st.lists(msgpack_values, min_size=0, max_size=8))
def test_random_envelope_shaped_input_only_raises_wire_error(fields):
    try:
        CODEC.decode(msgpack.packb(fields, use_bin_type=True))
    except WireError:
        pass


def test_require_fields_checks_presence_and_types():
    require_fields({"term": 1, "vote": None}, {"term": int, "vote": (str, type(None))})
    with pytest.raises(WireError, match="missing field 'term'"):
        require_fields({}, {"term": int})
    with pytest.raises(WireError, match="got bool"):
        require_fields({"term": True}, {"term": int})
    with pytest.raises(WireError, match="must be str or None, got int"):
        require_fields({"vote": 3}, {"vote": (str, type(None))})
