"""Log command formats: round trips, strict validation, and CommandError as the only failure."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caddy.errors import CaddyError
from caddy.replication import (
    Command,
    CommandError,
    KvCommand,
    KvOp,
    decode_batch,
    decode_command,
    decode_kv,
    encode_batch,
    encode_command,
    encode_kv,
)
from tests.strategies import msgpack_values

VALUES = msgpack_values(allow_nan=False, max_leaves=8)


def test_command_error_is_a_caddy_error():
    assert issubclass(CommandError, CaddyError)


@given(
    client_id=st.text(min_size=1, max_size=128),
    seq=st.integers(1, 2**63),
    data=st.data(),
    log_time_ms=st.integers(0, 2**63),
    payload=st.binary(max_size=64),
)
def test_session_envelope_round_trips(client_id, seq, data, log_time_ms, payload):
    ack_below = data.draw(st.integers(0, seq))
    encoded = encode_command(client_id, seq, log_time_ms, payload, ack_below=ack_below)
    assert decode_command(encoded) == Command(client_id, seq, ack_below, log_time_ms, payload)


def test_sessionless_envelope_round_trips():
    assert decode_command(encode_command("", 0, 7, b"x")) == Command("", 0, 0, 7, b"x")


@pytest.mark.parametrize(
    "client_id, seq, log_time_ms, payload, ack_below",
    [
        ("c", 0, 1, b"", 0),  # session seqs start at 1
        ("c", 3, 1, b"", 4),  # cannot acknowledge an answer not received yet
        ("c", 3, 1, b"", -1),
        ("c", 3, -1, b"", 0),
        ("c", True, 1, b"", 0),  # bool is not an integer here
        ("c", 1.0, 1, b"", 0),
        ("", 1, 1, b"", 0),  # no session: seq and ack_below are 0
        ("", 0, 1, b"", 1),
        ("x" * 129, 1, 1, b"", 0),
        (b"c", 1, 1, b"", 0),
        ("c", 1, 1, "text", 0),
        ("c", 2**64, 1, b"", 0),  # beyond what msgpack carries
    ],
)
def test_encode_command_rejects_invalid_fields(client_id, seq, log_time_ms, payload, ack_below):
    with pytest.raises(CommandError):
        encode_command(client_id, seq, log_time_ms, payload, ack_below=ack_below)


@pytest.mark.parametrize(
    "fields",
    [
        [1, "c", 1, 0, 5],  # too short
        [1, "c", 1, 0, 5, b"", None],  # too long
        [2, "c", 1, 0, 5, b""],  # unknown version
        [True, "c", 1, 0, 5, b""],
        [1, "c", 0, 0, 5, b""],
        [1, "c", 1, 2, 5, b""],
        [1, "c", 1, 0, -5, b""],
        [1, "c", 1, 0, 5, "not bytes"],
        [1, None, 1, 0, 5, b""],
        {"client_id": "c"},
    ],
)
def test_decode_command_rejects_malformed_envelopes(fields):
    with pytest.raises(CommandError):
        decode_command(msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x96\x01", b"\x90\x90", None, "text"])
def test_decode_command_rejects_non_msgpack(data):
    with pytest.raises(CommandError):
        decode_command(data)


@settings(max_examples=300)
@given(st.binary(max_size=40))
def test_decode_command_raises_only_command_error(data):
    try:
        decode_command(data)
    except CommandError:
        pass


@given(st.text(max_size=16), VALUES, VALUES)
def test_kv_payloads_round_trip(key, value, expected):
    assert decode_kv(encode_kv("put", key, value)) == KvCommand(KvOp.PUT, key, value, None)
    assert decode_kv(encode_kv("delete", key)) == KvCommand(KvOp.DELETE, key, None, None)
    assert decode_kv(encode_kv("cas", key, value, expected)) == KvCommand(
        KvOp.CAS, key, value, expected
    )


def test_decoded_kv_op_is_the_enum_member():
    assert decode_kv(encode_kv(KvOp.DELETE, "k")).op is KvOp.DELETE


@pytest.mark.parametrize(
    "op, key, value, expected",
    [
        ("get", "k", None, None),
        ("PUT", "k", 1, None),
        ("put", 1, 1, None),
        ("put", "k", 1, 2),  # only cas has an expected value
        ("delete", "k", 1, None),
        ("delete", "k", None, 1),
        ("put", "k", object(), None),  # not msgpack-able
    ],
)
def test_encode_kv_rejects_invalid_operations(op, key, value, expected):
    with pytest.raises(CommandError):
        encode_kv(op, key, value, expected)


@pytest.mark.parametrize(
    "fields",
    [["put", "k", 1], ["put", "k", 1, None, None], ["get", "k", None, None], [1, "k", 1, None]],
)
def test_decode_kv_rejects_malformed_payloads(fields):
    with pytest.raises(CommandError):
        decode_kv(msgpack.packb(fields))


@settings(max_examples=300)
@given(st.binary(max_size=40))
def test_decode_kv_raises_only_command_error(data):
    try:
        decode_kv(data)
    except CommandError:
        pass


def test_a_batch_round_trips_in_order_with_the_batch_log_time():
    commands = [("a", 1, 0, b"p1"), ("b", 7, 5, b"p2"), ("", 0, 0, b"p3")]
    log_time_ms, decoded = decode_batch(encode_batch(42, commands))
    assert log_time_ms == 42
    assert decoded == [Command(c, s, a, 42, p) for c, s, a, p in commands]


def test_a_single_command_envelope_is_a_batch_of_one():
    data = encode_command("a", 3, 17, b"p", ack_below=2)
    assert decode_batch(data) == (17, [Command("a", 3, 2, 17, b"p")])


def test_encode_batch_checks_every_write():
    with pytest.raises(CommandError):
        encode_batch(1, [("a", 1, 0, b""), ("b", 0, 0, b"")])  # seq 0 in a session
    with pytest.raises(CommandError):
        encode_batch(-1, [("a", 1, 0, b"")])


def test_a_malformed_write_in_a_batch_stands_in_place_and_the_others_decode():
    data = msgpack.packb([2, 9, [["a", 1, 0, b"x"], ["b", 0, 0, b"y"], "junk", ["c", 2, 1, b"z"]]])
    log_time_ms, decoded = decode_batch(data)
    assert log_time_ms == 9
    assert decoded[0] == Command("a", 1, 0, 9, b"x")
    assert isinstance(decoded[1], CommandError) and isinstance(decoded[2], CommandError)
    assert decoded[3] == Command("c", 2, 1, 9, b"z")


@pytest.mark.parametrize(
    "fields",
    [
        [2, 9],
        [1, 9, []],  # a single-command envelope's version
        [1, "c", 0, 0, 5, b""],  # a malformed single-command envelope
        [2, -1, []],
        [2, True, []],
        [2, 9, {"a": 1}],
        {"version": 2},
    ],
)
def test_decode_batch_rejects_malformed_batches(fields):
    with pytest.raises(CommandError):
        decode_batch(msgpack.packb(fields))


@settings(max_examples=200)
@given(st.binary(max_size=48))
def test_decode_batch_raises_only_command_error(data):
    try:
        decode_batch(data)
    except CommandError:
        pass
