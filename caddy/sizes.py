"""Sizes that always fit: the largest write a client may send, and how much a node puts in one
message, derived from `transport.max_message_bytes`.

A write's bytes travel in several frames: the client's request (an envelope around the write's
fields), and on the leader a log entry (a batch of writes with their session fields) inside an
AppendEntries inside an envelope, or a snapshot chunk. `FRAME_OVERHEAD_BYTES` bounds the framing
around one write for names (cluster, node and client ids) of up to `MAX_NAME_LENGTH` characters,
so that a write of `max_write_bytes` fits every message it travels in; the node's own batches
(entries per append, snapshot chunks) are held below the limit by the functions here.
"""

from __future__ import annotations

from collections.abc import Iterable

from caddy.errors import ValueTooLarge

# The framing around one write in the largest message that carries it, with room to spare: an
# envelope (three names of up to 128 characters, at most 4 UTF-8 bytes each), an AppendEntries
# header, one entry's framing and a batch entry's session fields (a client id of up to 128
# characters) come to 2,231 bytes (tests/unit/test_sizes.py builds that frame).
FRAME_OVERHEAD_BYTES = 4096
# The smallest `transport.max_message_bytes` a topology may set: room for a useful write.
MIN_MESSAGE_BYTES = 4 * FRAME_OVERHEAD_BYTES
# What one more entry adds to an AppendEntries besides its data: [index, term, kind, bin header].
ENTRY_FRAMING_BYTES = 32
# What one more write adds to a batch entry besides its payload and client id: the array, the
# client id's header, seq, ack and the payload's bin header.
WRITE_FRAMING_BYTES = 32
UTF8_BYTES_PER_CHAR = 4  # at most
# A membership on the wire: the map with its three role names and list headers.
MEMBERSHIP_FRAMING_BYTES = 64
NAME_FRAMING_BYTES = 5  # a str header, at most


def max_write_bytes(max_message_bytes: int) -> int:
    """The largest write payload (the key-value operation as `encode_kv` packs it: op, key,
    value and cas guard) that fits every message it travels in."""
    return max_message_bytes - FRAME_OVERHEAD_BYTES


def check_write(what: str, size: int, max_message_bytes: int) -> None:
    """Raise ValueTooLarge when `size` bytes (a write's payload, or a key) are over
    `max_write_bytes`."""
    limit = max_write_bytes(max_message_bytes)
    if size > limit:
        raise ValueTooLarge(what, size, limit, max_message_bytes)


def batched_write_bytes(payload_bytes: int, client_id_chars: int) -> int:
    """At most what one write adds to a batch entry (a client id's characters counted at their
    longest in UTF-8, so that nothing has to be encoded to size a write)."""
    return payload_bytes + UTF8_BYTES_PER_CHAR * client_id_chars + WRITE_FRAMING_BYTES


def membership_bytes(names: Iterable[str]) -> int:
    """At most what a membership of these node ids takes on the wire."""
    return MEMBERSHIP_FRAMING_BYTES + sum(
        UTF8_BYTES_PER_CHAR * len(name) + NAME_FRAMING_BYTES for name in names
    )


def append_bytes_limit(max_message_bytes: int, max_append_bytes: int, max_entries: int) -> int:
    """Entry data per AppendEntries (`raft.max_append_bytes`, held lower when needed) such that
    `max_entries` entries and their framing fit one message. An entry alone is sent even when it
    is larger: a write's entry fits by `FRAME_OVERHEAD_BYTES`."""
    room = max_message_bytes - FRAME_OVERHEAD_BYTES - ENTRY_FRAMING_BYTES * max_entries
    return max(1, min(max_append_bytes, room))


def snapshot_chunk_limit(
    max_message_bytes: int, snapshot_chunk_bytes: int, membership_bytes: int
) -> int:
    """Snapshot bytes per InstallSnapshot (`replication.snapshot_chunk_bytes`, held lower when
    needed) such that a chunk, its header and the snapshot's membership fit one message."""
    room = max_message_bytes - FRAME_OVERHEAD_BYTES - membership_bytes
    return max(1, min(snapshot_chunk_bytes, room))
