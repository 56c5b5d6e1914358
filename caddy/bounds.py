"""The bounds every value off a socket is held to, and the checks that enforce them cheaply.

Owns the limits (nesting depth, identifier lengths, integer ranges) and `describe`, the short,
bounded summary of an untrusted value that error messages use instead of its repr.

Why: msgpack decodes arrays and maps nested ~1,000 deep from a frame of 1 KB, and anything that
recurses over such a value in Python (repr, ==, a recursive walk) raises RecursionError; a frame's
ints reach 2**64 - 1, more than SQLite or a term can hold; and a float or a bool is not an index.
So every decoder checks exact types and ranges, and the one kind of field that is free-form (a
client's key-value value, a cas guard) is walked here, never deeper than the bound, before
anything else looks at it.
"""

from __future__ import annotations

from typing import Any

# Identifiers: cluster names, node ids, message kinds, member ids, client ids.
MAX_NAME_LENGTH = 128
# Raft terms and indexes, snapshot offsets: what SQLite's INTEGER holds.
MAX_INT64 = 2**63 - 1
# What msgpack can carry as an unsigned int: request ids.
MAX_UINT64 = 2**64 - 1
# Levels of arrays and maps in a client's value (put value, cas expected and new): a scalar is
# depth 0, [1] depth 1, {"a": [1]} depth 2. The element count needs no bound of its own: the
# frame's size bounds it, and the walk costs less than msgpack took to decode it.
MAX_VALUE_DEPTH = 32
# Members of one Raft configuration role (voters, learners, witnesses) or of a gossip sync.
MAX_MEMBERS = 65536

_NONE = type(None)
SCALAR_TYPES = frozenset({str, int, float, bool, bytes, _NONE})
_KEY_TYPES = frozenset({str, bytes})  # what msgpack's strict map keys allow
_SHOWN_STR_CHARS = 24
_SMALL = 16  # items of a container looked at one by one; beyond, typed in C first


def describe(value: Any) -> str:
    """A short summary of an untrusted value for an error message: its type, its length, and
    the value itself only when that is a small scalar. Never recurses, never repr()s a
    container, and is at most ~80 characters."""
    kind = type(value)
    if value is None or kind is bool:
        return repr(value)
    if kind is int:
        return repr(value) if -(10**20) < value < 10**20 else f"an int of {value.bit_length()} bits"
    if kind is float:
        return f"float {value!r}"  # repr of a float is short, nan and inf included
    if kind is str:
        if len(value) <= _SHOWN_STR_CHARS and value.isprintable():
            return repr(value)
        return f"a str of {len(value)} chars"
    if kind in (bytes, bytearray, memoryview):
        return f"{kind.__name__} of {len(value)} bytes"
    if kind in (list, tuple, dict):
        return f"a {kind.__name__} of {len(value)} items"
    return f"a {kind.__name__[:40]}"


def is_name(value: Any) -> bool:
    """A non-empty identifier of at most MAX_NAME_LENGTH characters (exactly a str)."""
    return type(value) is str and 0 < len(value) <= MAX_NAME_LENGTH


def value_problem(value: Any, limit: int = MAX_VALUE_DEPTH) -> str | None:
    """Why `value` is not a free-form value within the bounds, or None when it is.

    Accepted: None, bool, int, float, str, bytes, and lists (tuples) and maps with str or bytes
    keys of those, nested at most `limit` levels. A scalar costs one set lookup. The walk
    descends into containers only, and never further than `limit` (so a value nested a million
    levels deep, or one that contains itself, costs `limit` steps and no deeper a stack); the
    items of a large container are typed in C (`set(map(type, ...))`), so a flat list of a
    million ints costs milliseconds, less than msgpack took to decode it.
    """
    if type(value) in SCALAR_TYPES:
        return None
    return _problem(value, limit, limit)


def _problem(value: Any, budget: int, limit: int) -> str | None:
    kind = type(value)
    if kind is dict:
        if len(value) > _SMALL:
            if not set(map(type, value)) <= _KEY_TYPES:
                return "a map key is not a str or bytes"
        else:
            for key in value:
                if type(key) not in _KEY_TYPES:
                    return "a map key is not a str or bytes"
        items: Any = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return f"{describe(value)} is not a msgpack value"
    if budget <= 0:
        return f"nested deeper than {limit} levels"
    if len(items) > _SMALL and set(map(type, items)) <= SCALAR_TYPES:
        return None
    for item in items:
        if type(item) not in SCALAR_TYPES:
            problem = _problem(item, budget - 1, limit)  # at most `limit` calls deep
            if problem is not None:
                return problem
    return None
