"""The key-value state machine: str keys, msgpack values, put / delete / cas through the log.

Reads do not go through the log: the node serves `read` locally once ReadIndex says it may.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from caddy.replication.commands import CommandError, KvOp, decode_kv
from caddy.replication.packing import pack, pack_map_in_slices, unpack
from caddy.replication.state_machine import (
    ErrorCode,
    SnapshotError,
    StateMachine,
    error_result,
    ok_result,
)

_PUT, _DELETE = KvOp.PUT, KvOp.DELETE  # an Enum member lookup costs 80 ns; a global, 10


class KeyValueStore(StateMachine):
    """A map from str keys to values msgpack carries (str, int, float, bool, None, bytes, lists,
    maps of those).

    `apply` takes a payload from `encode_kv` and returns `{"ok": True, "value": v}` where v is None
    for put, "the key existed" for delete and "the swap happened" for cas; a malformed payload
    gives `{"ok": False, "error": "invalid", ...}` and changes nothing.
    """

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._data)

    def apply(self, command: bytes) -> dict[str, Any]:
        try:
            op, key, value, expected = decode_kv(command)
        except CommandError as error:
            return error_result(ErrorCode.INVALID, str(error))
        if op is _PUT:  # the common case first, without a call (this runs for every write)
            self._data[key] = value
            return ok_result()
        if op is _DELETE:
            return ok_result(self.delete(key))
        return ok_result(self.cas(key, expected, value))

    def read(self, key: str) -> Any:
        """The value under `key`, None when absent: a stored None reads like an absent key."""
        return self._data.get(key)

    get = read  # the client's name for the same read

    def put(self, key: str, value: Any) -> None:
        self._data[key] = value

    def delete(self, key: str) -> bool:
        """Remove `key`; True when it existed."""
        return self._data.pop(key, _ABSENT) is not _ABSENT

    def cas(self, key: str, expected: Any, new: Any) -> bool:
        """Store `new` if `key` reads as `expected`; True when the swap happened.

        The comparison is the one `read` offers: `expected` None matches an absent key (and a
        stored None, which reads the same). Values compare by msgpack type as well as by value,
        so 1, 1.0 and True are three different values.
        """
        if not same_value(self._data.get(key), expected):
            return False
        self._data[key] = new
        return True

    def snapshot(self) -> bytes:
        return pack(self._data)

    def snapshot_view(self) -> Callable[[], bytes]:
        """`snapshot()`'s bytes, made later (on another thread) from a copy taken now: copying
        the map costs a fraction of packing it, and values are only ever replaced, never changed
        in place, so the copy stays as it was."""
        data = dict(self._data)
        return lambda: pack_map_in_slices(data)

    def restore(self, data: bytes) -> None:
        state = unpack(data, SnapshotError)
        if type(state) is not dict or not all(type(key) is str for key in state):
            raise SnapshotError("key-value snapshot: expected a map with string keys")
        self._data = state


_ABSENT = object()
_ARRAYS = (list, tuple)


def same_value(left: Any, right: Any) -> bool:
    """Equality as msgpack sees it: types must match (bool is not int, int is not float), lists
    and tuples are both arrays, maps compare without regard to key order."""
    if type(left) in _ARRAYS and type(right) in _ARRAYS:
        return len(left) == len(right) and all(map(same_value, left, right))
    if type(left) is not type(right):
        return False
    if type(left) is dict:
        return left.keys() == right.keys() and all(same_value(v, right[k]) for k, v in left.items())
    return left == right
