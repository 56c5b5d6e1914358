"""Values sized to the byte: what the size tests write at, and one past, the largest write."""

from caddy.replication.commands import encode_kv


def value_for_payload(op, key, payload_bytes, expected=None):
    """A bytes value whose write payload (as `encode_kv` packs it) has exactly that size."""
    value = b""
    for _ in range(10):  # a length header that grows can overshoot once: trim, try again
        missing = payload_bytes - len(encode_kv(op, key, value, expected))
        if missing == 0:
            return value
        value = b"v" * max(0, len(value) + missing)
    raise AssertionError(f"no value gives a payload of {payload_bytes} bytes")
