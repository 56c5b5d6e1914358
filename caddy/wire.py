"""The CADDY frame: a msgpack envelope (version, cluster, sender, kind, request id, body).

Owns encoding, decoding, size limits and body compression; every malformed input raises WireError.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from caddy.bounds import MAX_NAME_LENGTH, MAX_UINT64, describe
from caddy.errors import WireError

PROTOCOL_VERSION = 1
FLAG_COMPRESSED = 0x1
_KNOWN_FLAGS = FLAG_COMPRESSED
_ENVELOPE_FIELDS = 7
_FRAME_TYPES = (bytes, bytearray, memoryview)

# Requests issued together by a client travel in one frame, and their answers in one frame back:
# a `BATCH_KIND` envelope (request id 0) whose body is {"requests": [[request id, kind, body], ...]}
# and a `REPLIES_KIND` one with {"replies": [...]}; each item is still a request, or the answer
# to one, of its own. Items are ordinary kinds, never a batch.
BATCH_KIND = "kv.batch"
REPLIES_KIND = "kv.replies"
BATCH_FIELDS = {BATCH_KIND: "requests", REPLIES_KIND: "replies"}
MAX_BATCH_ITEMS = 256  # items of one batch frame; a receiver drops the rest


class Envelope(NamedTuple):
    """One decoded message. `request_id` correlates a response with its request (0: none).

    A NamedTuple rather than a frozen dataclass: as immutable, at under half the construction
    cost, and one is built for every message and every item of a batch frame.
    """

    cluster: str
    sender: str
    kind: str
    body: dict[str, Any]
    request_id: int = 0


@dataclass(frozen=True, slots=True)
class Codec:
    """Encodes and decodes the frames of one cluster, enforcing its size and compression settings.

    `compress_threshold` is the packed body size above which bodies are zlib-compressed; None
    turns compression off (decoding accepts compressed bodies either way).
    """

    cluster: str
    sender: str
    max_message_bytes: int = 16 * 1024 * 1024
    compress_threshold: int | None = 4096

    def encode(
        self, kind: str, body: Mapping[str, Any], request_id: int = 0, *, compress: bool = True
    ) -> bytes:
        try:
            frame = _pack([PROTOCOL_VERSION, self.cluster, self.sender, kind, request_id, 0, body])
            # Small frames (the common case) are packed once; large ones get a compressed body.
            threshold = self.compress_threshold
            if compress and threshold is not None and len(frame) > threshold:
                compressed = zlib.compress(_pack(body), 1)
                header = [PROTOCOL_VERSION, self.cluster, self.sender, kind, request_id]
                packed = _pack([*header, FLAG_COMPRESSED, compressed])
                if len(packed) < len(frame):  # incompressible bodies stay as they are
                    frame = packed
        except (TypeError, ValueError, OverflowError) as error:
            raise WireError(f"cannot encode {kind!r}: {error}") from error
        if len(frame) > self.max_message_bytes:
            raise WireError(
                f"{kind!r} is {len(frame)} bytes, over the {self.max_message_bytes} limit"
            )
        return frame

    def encode_batch(self, kind: str, items: list[list[Any]]) -> bytes:
        """A BATCH_KIND or REPLIES_KIND frame of `items`, [request id, kind, body] each. Never
        compressed: a batch is of small messages, and zlib would cost more than batching saves."""
        return self.encode(kind, {BATCH_FIELDS[kind]: items}, compress=False)

    def decode(self, frame: bytes) -> Envelope:
        """Decode one frame; any defect (including a foreign cluster name) raises WireError."""
        envelope = decode_envelope(frame, self.max_message_bytes)
        if envelope.cluster != self.cluster:
            raise WireError(f"foreign cluster {envelope.cluster!r}")
        return envelope


def decode_envelope(frame: bytes, max_message_bytes: int) -> Envelope:
    """Decode a frame of any cluster. Raises WireError, and only WireError, on bad input.

    The envelope's fields are checked for exact types and ranges; the body is only known to be a
    map (with str or bytes keys): its fields are the business of the decoder of its kind, which
    must be as strict. Error messages never show an unchecked value, only `describe(value)`."""
    if not isinstance(frame, _FRAME_TYPES):
        raise WireError("frame is not bytes")
    if len(frame) > max_message_bytes:
        raise WireError(f"frame of {len(frame)} bytes is over the {max_message_bytes} limit")
    fields = _unpack(frame)
    if type(fields) is not list or len(fields) != _ENVELOPE_FIELDS:  # msgpack makes exact lists
        raise WireError("envelope is not a list of 7 fields")
    version, cluster, sender, kind, request_id, flags, payload = fields
    if type(version) is not int or version != PROTOCOL_VERSION:  # the type first: a nested
        raise WireError(f"unsupported protocol version ({describe(version)})")  # list recurses
    if not (_is_name(cluster) and _is_name(sender) and _is_name(kind)):
        for name, value in (("cluster", cluster), ("sender", sender), ("kind", kind)):
            if not _is_name(value):
                raise WireError(f"{name} must be a non-empty short string")
    if type(request_id) is not int or not 0 <= request_id <= MAX_UINT64:
        raise WireError("request id must be a non-negative int")
    if type(flags) is not int or flags & ~_KNOWN_FLAGS:
        raise WireError(f"unknown flags ({describe(flags)})")
    if flags & FLAG_COMPRESSED:
        payload = _unpack(_inflate(payload, max_message_bytes))
    if type(payload) is not dict:  # msgpack makes exact dicts
        raise WireError("body is not a map")
    return Envelope(cluster, sender, kind, payload, request_id)


def unpack_batch(envelope: Envelope) -> tuple[list[Envelope], Counter[str]]:
    """The items of a BATCH_KIND or REPLIES_KIND frame as envelopes of their own (with the
    frame's cluster and sender), and how many were dropped, by reason. Untrusted input: nothing
    raises."""
    dropped: Counter[str] = Counter()
    field = BATCH_FIELDS.get(envelope.kind)
    frame_body = envelope.body
    items = frame_body.get(field) if field is not None and type(frame_body) is dict else None
    if type(items) is not list:  # msgpack makes exact lists
        dropped["batch-malformed"] += 1
        return [], dropped
    if len(items) > MAX_BATCH_ITEMS:
        dropped["batch-too-long"] += len(items) - MAX_BATCH_ITEMS
        items = items[:MAX_BATCH_ITEMS]
    cluster, sender = envelope.cluster, envelope.sender
    envelopes = []
    for item in items:
        if type(item) is not list or len(item) != 3:
            dropped["batch-item-malformed"] += 1
            continue
        request_id, kind, body = item
        well_typed = type(request_id) is int and _is_name(kind) and type(body) is dict
        if not well_typed or not 0 <= request_id <= MAX_UINT64:
            dropped["batch-item-malformed"] += 1
        elif kind in BATCH_FIELDS:
            dropped["batch-nested"] += 1
        else:
            envelopes.append(Envelope(cluster, sender, kind, body, request_id))
    return envelopes, dropped


def _is_name(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_NAME_LENGTH  # msgpack makes exact strs


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(data: Any) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as error:  # msgpack raises many types for bad input; all mean "malformed"
        raise WireError(f"not msgpack: {type(error).__name__}") from error


def _inflate(payload: Any, max_message_bytes: int) -> bytes:
    if not isinstance(payload, bytes):
        raise WireError("compressed body is not bytes")
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(payload, max_message_bytes)
    except zlib.error as error:
        raise WireError(f"corrupt compressed body: {error}") from error
    if inflater.unconsumed_tail:
        raise WireError("compressed body inflates past the message size limit")
    if not inflater.eof:
        raise WireError("truncated compressed body")
    return data


FieldType = type | tuple[type, ...]
_ABSENT = object()


def require_fields(body: Mapping[str, Any], schema: Mapping[str, FieldType]) -> None:
    """Check that `body` has every field of `schema` with the right type (bool is not an int)."""
    for name, expected in schema.items():
        value = body.get(name, _ABSENT)
        if value is _ABSENT:
            raise WireError(f"missing field {name!r}")
        if type(value) is expected or expected is object:
            continue  # the common case, in one test (every client request passes here)
        allowed = expected if isinstance(expected, tuple) else (expected,)
        if isinstance(value, bool) and bool not in allowed and object not in allowed:
            raise WireError(f"field {name!r} must be {_type_names(allowed)}, got bool")
        if not isinstance(value, allowed):
            raise WireError(
                f"field {name!r} must be {_type_names(allowed)}, got {type(value).__name__}"
            )


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)
