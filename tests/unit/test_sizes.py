"""A write of `max_write_bytes` fits every message it travels in, with the longest names there
are: the client's request, the leader's AppendEntries, the answer to a read of it; and the node's
own batches (entries per append, snapshot chunks) stay below the message limit."""

import msgpack
import pytest

from caddy.bounds import MAX_INT64, MAX_NAME_LENGTH
from caddy.errors import ValueTooLarge
from caddy.raft.codec import to_wire
from caddy.raft.messages import AppendEntries, InstallSnapshot
from caddy.raft.types import Entry, EntryKind, Membership, SnapshotMeta
from caddy.replication.commands import encode_batch, encode_kv
from caddy.sizes import (
    FRAME_OVERHEAD_BYTES,
    MIN_MESSAGE_BYTES,
    append_bytes_limit,
    batched_write_bytes,
    check_write,
    max_write_bytes,
    membership_bytes,
    snapshot_chunk_limit,
)
from caddy.wire import Codec
from tests.sizing import value_for_payload

LONGEST_NAME = "\N{GRINNING FACE}" * MAX_NAME_LENGTH  # 4 bytes a character in UTF-8
LIMITS = (MIN_MESSAGE_BYTES, 1 << 20, 16 << 20)


def codec(limit):
    return Codec(LONGEST_NAME, LONGEST_NAME, max_message_bytes=limit, compress_threshold=None)


@pytest.mark.parametrize("limit", LIMITS)
def test_a_write_of_the_maximum_size_fits_the_leaders_append(limit):
    payload = encode_kv("put", "k", value_for_payload("put", "k", max_write_bytes(limit)))
    assert len(payload) == max_write_bytes(limit)
    data = encode_batch(MAX_INT64, [(LONGEST_NAME, MAX_INT64, MAX_INT64, payload)])
    entry = Entry(MAX_INT64, MAX_INT64, EntryKind.COMMAND, data)
    append = AppendEntries(MAX_INT64, LONGEST_NAME, MAX_INT64, MAX_INT64, (entry,), MAX_INT64)
    frame = codec(limit).encode(append.kind, to_wire(append), request_id=2**64 - 1)
    assert len(frame) <= limit
    assert limit - len(frame) < FRAME_OVERHEAD_BYTES  # the bound is not far off either


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("op", ["put", "cas"])
def test_the_clients_request_and_the_answer_to_reading_it_fit(limit, op):
    key = "k" * 200
    size = max_write_bytes(limit)
    if op == "put":
        value = value_for_payload("put", key, size)
        body = {"key": key, "value": value}
    else:  # the guard and the new value share the write's bytes
        expected = b"e" * (size // 2)
        value = value_for_payload("cas", key, size, expected)
        body = {"key": key, "expected": expected, "new": value}
    session = {"client": LONGEST_NAME, "seq": MAX_INT64, "ack": MAX_INT64}
    request = codec(limit).encode(f"kv.{op}", {**body, **session}, request_id=2**64 - 1)
    assert len(request) <= limit
    answer = codec(limit).encode("kv.ok", {"value": value}, request_id=2**64 - 1)
    assert len(answer) <= limit


@pytest.mark.parametrize("limit", LIMITS)
def test_a_full_append_of_many_entries_fits(limit):
    max_entries = 64
    room = append_bytes_limit(limit, max_append_bytes=limit, max_entries=max_entries)
    each = room // max_entries
    entries = tuple(
        Entry(MAX_INT64 - n, MAX_INT64, EntryKind.COMMAND, b"x" * each) for n in range(max_entries)
    )
    append = AppendEntries(MAX_INT64, LONGEST_NAME, MAX_INT64, MAX_INT64, entries, MAX_INT64)
    assert len(codec(limit).encode(append.kind, to_wire(append))) <= limit
    assert append_bytes_limit(limit, max_append_bytes=1000, max_entries=64) == 1000


@pytest.mark.parametrize("limit", LIMITS)
def test_a_snapshot_chunk_fits_with_its_membership(limit):
    voters = frozenset(f"{LONGEST_NAME[:-3]}{n:03}" for n in range(7))
    membership = Membership(voters, frozenset(), frozenset())
    meta = SnapshotMeta(MAX_INT64, MAX_INT64, membership)
    bound = membership_bytes(voters)
    assert bound >= len(msgpack.packb(to_wire_meta(meta)["membership"]))
    chunk = snapshot_chunk_limit(limit, limit, bound)
    message = InstallSnapshot(MAX_INT64, LONGEST_NAME, meta, MAX_INT64, b"s" * chunk, True)
    assert len(codec(limit).encode(message.kind, to_wire(message))) <= limit
    assert snapshot_chunk_limit(limit, 100, bound) == 100


def to_wire_meta(meta):
    return to_wire(InstallSnapshot(0, "x", meta, 0, b"", True))["meta"]


def test_a_batched_write_counts_at_least_what_it_adds_to_an_entry():
    payload, client = b"p" * 100, LONGEST_NAME
    alone = len(encode_batch(MAX_INT64, [(client, MAX_INT64, MAX_INT64, payload)]))
    two = len(encode_batch(MAX_INT64, [(client, MAX_INT64, MAX_INT64, payload)] * 2))
    assert two - alone <= batched_write_bytes(len(payload), len(client))  # chars, not bytes


def test_a_write_over_the_largest_size_raises_naming_both_sizes():
    limit = MIN_MESSAGE_BYTES
    check_write("the write", max_write_bytes(limit), limit)  # exactly the largest: no error
    with pytest.raises(ValueTooLarge) as raised:
        check_write("the write", max_write_bytes(limit) + 1, limit)
    error = raised.value
    assert (error.size, error.limit, error.max_message_bytes) == (12289, 12288, limit)
    assert str(error) == (
        "the write is 12289 bytes, over the largest of 12288 bytes "
        "(transport.max_message_bytes 16384 less 4096 bytes of framing)"
    )
