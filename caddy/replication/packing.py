"""The msgpack settings of replicated state, in one place so every replica encodes alike.

Decoding failures of any kind become the caller's CaddyError subclass, never a msgpack exception.
"""

from __future__ import annotations

from typing import Any

import msgpack

from caddy.errors import CaddyError


def pack(value: Any) -> bytes:
    """msgpack with bin/str kept apart, so bytes and str values survive a round trip."""
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes, error: type[CaddyError]) -> Any:
    """Decode one msgpack value; anything that is not exactly one valid value raises `error`.

    The message is fixed (not msgpack's own text), so every replica reports the same words.
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception:  # msgpack raises many types for bad input; all mean "malformed"
        raise error("not a msgpack value") from None
