"""The msgpack settings of replicated state, in one place so every replica encodes alike.

Decoding failures of any kind become the caller's CaddyError subclass, never a msgpack exception.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import msgpack

from caddy.errors import CaddyError


def pack(value: Any) -> bytes:
    """msgpack with bin/str kept apart, so bytes and str values survive a round trip."""
    return msgpack.packb(value, use_bin_type=True)


def pack_map_in_slices(mapping: Mapping[Any, Any], slice_items: int = 4096) -> bytes:
    """The bytes of `pack(dict(mapping))`, packed a slice at a time: each slice is one short C
    call, so a thread packing a large map lets the others run in between (one `packb` of the
    whole map would hold the GIL throughout)."""
    items = iter(mapping.items())
    parts = [_map_header(len(mapping))]
    while piece := dict(itertools.islice(items, slice_items)):
        parts.append(pack(piece)[len(_map_header(len(piece))) :])  # the pairs, without a header
    return b"".join(parts)


def _map_header(count: int) -> bytes:
    """msgpack's map header, in the smallest form, as `packb` writes it."""
    if count <= 15:
        return bytes((0x80 | count,))
    if count <= 0xFFFF:
        return b"\xde" + count.to_bytes(2, "big")
    return b"\xdf" + count.to_bytes(4, "big")


def unpack(data: bytes, error: type[CaddyError]) -> Any:
    """Decode one msgpack value; anything that is not exactly one valid value raises `error`.

    The message is fixed (not msgpack's own text), so every replica reports the same words.
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception:  # msgpack raises many types for bad input; all mean "malformed"
        raise error("not a msgpack value") from None
