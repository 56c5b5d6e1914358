"""The key-value state machine: put/get/delete/cas semantics, invalid payloads, snapshots."""

import msgpack
import pytest

from caddy.replication import KeyValueStore, SnapshotError, StateMachine, encode_kv
from caddy.replication.packing import pack, pack_map_in_slices


def apply(store, op, key, value=None, expected=None):
    return store.apply(encode_kv(op, key, value, expected))


def test_it_is_a_state_machine():
    assert isinstance(KeyValueStore(), StateMachine)


def test_put_then_read():
    store = KeyValueStore()
    assert apply(store, "put", "k", "v") == {"ok": True, "value": None}
    assert store.read("k") == "v"
    assert store.get("k") == "v"
    assert apply(store, "put", "k", "w") == {"ok": True, "value": None}
    assert store.read("k") == "w"


def test_absent_key_reads_none():
    assert KeyValueStore().read("missing") is None


@pytest.mark.parametrize(
    "value",
    ["s", 0, -(2**63), 2**64 - 1, 1.5, True, False, None, b"\x00\xff", [1, [2]], {"a": {"b": b""}}],
)
def test_values_of_every_msgpack_type_survive_the_log_and_a_snapshot(value):
    store = KeyValueStore()
    apply(store, "put", "k", value)
    assert store.read("k") == value and type(store.read("k")) is type(value)
    copy = KeyValueStore()
    copy.restore(store.snapshot())
    assert copy.read("k") == value and type(copy.read("k")) is type(value)


def test_delete_reports_whether_the_key_existed():
    store = KeyValueStore()
    apply(store, "put", "k", 1)
    assert apply(store, "delete", "k") == {"ok": True, "value": True}
    assert store.read("k") is None
    assert apply(store, "delete", "k") == {"ok": True, "value": False}


def test_delete_of_a_stored_none_reports_it_existed():
    store = KeyValueStore()
    apply(store, "put", "k", None)
    assert apply(store, "delete", "k")["value"] is True


def test_cas_swaps_only_on_a_match():
    store = KeyValueStore()
    apply(store, "put", "k", "a")
    assert apply(store, "cas", "k", "c", expected="b") == {"ok": True, "value": False}
    assert store.read("k") == "a"
    assert apply(store, "cas", "k", "c", expected="a") == {"ok": True, "value": True}
    assert store.read("k") == "c"


def test_cas_with_expected_none_creates_an_absent_key_only():
    store = KeyValueStore()
    assert store.cas("k", None, 1) is True
    assert store.read("k") == 1
    assert store.cas("k", None, 2) is False
    assert store.read("k") == 1


def test_cas_with_expected_none_matches_a_stored_none_since_it_reads_alike():
    store = KeyValueStore()
    store.put("k", None)
    assert store.cas("k", None, 1) is True
    assert store.read("k") == 1


@pytest.mark.parametrize(
    "stored, expected",
    [
        (1, True),
        (True, 1),
        (1, 1.0),
        (0, False),
        ("1", 1),
        (b"a", "a"),
        ([1], [True]),
        ({"a": 1}, {"a": 1.0}),
    ],
)
def test_cas_compares_msgpack_types_not_python_equality(stored, expected):
    store = KeyValueStore()
    store.put("k", stored)
    assert store.cas("k", expected, "new") is False
    assert store.read("k") == stored


@pytest.mark.parametrize(
    "stored, expected",
    [([1, [2, b"x"]], (1, (2, b"x"))), ({"a": [1], "b": None}, {"b": None, "a": [1]}), (2.5, 2.5)],
)
def test_cas_matches_equal_arrays_and_maps_in_any_key_order(stored, expected):
    store = KeyValueStore()
    store.put("k", stored)
    assert store.cas("k", expected, "new") is True
    assert store.read("k") == "new"


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", msgpack.packb(["get", "k", None, None]), msgpack.packb(["put", 7, 1, None])],
)
def test_an_invalid_payload_is_an_error_result_and_changes_nothing(payload):
    store = KeyValueStore()
    store.put("k", 1)
    before = store.snapshot()
    result = store.apply(payload)
    assert result["ok"] is False and result["error"] == "invalid" and result["detail"]
    assert store.snapshot() == before


def test_restore_replaces_the_whole_state():
    source = KeyValueStore()
    source.put("a", 1)
    target = KeyValueStore()
    target.put("b", 2)
    target.restore(source.snapshot())
    assert target.read("a") == 1 and target.read("b") is None and len(target) == 1


@pytest.mark.parametrize(
    "data", [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({1: "int key"}), msgpack.packb("x")]
)
def test_a_bad_snapshot_raises_and_keeps_the_state(data):
    store = KeyValueStore()
    store.put("k", 1)
    with pytest.raises(SnapshotError):
        store.restore(data)
    assert store.read("k") == 1 and len(store) == 1


def test_snapshots_of_equal_histories_are_byte_identical():
    replicas = [KeyValueStore(), KeyValueStore()]
    for store in replicas:
        for i in range(20):
            apply(store, "put", f"k{i % 7}", i)
            apply(store, "delete", f"k{i % 5}")
    assert replicas[0].snapshot() == replicas[1].snapshot()


def test_a_snapshot_view_makes_the_bytes_of_the_state_when_it_was_taken():
    store = KeyValueStore()
    for i in range(5000):
        store.apply(encode_kv("put", f"k{i}", [i, "v"]))
    expected = store.snapshot()
    view = store.snapshot_view()
    store.apply(encode_kv("put", "k1", "changed"))  # the machine goes on applying
    store.apply(encode_kv("delete", "k2"))
    assert view() == expected


def test_packing_a_map_in_slices_gives_the_bytes_of_packing_it_whole():
    for count in (0, 1, 15, 16, 4095, 4096, 4097, 65535, 65536, 65537):
        mapping = {f"k{i}": (b"b" * (i % 5) if i % 2 else [i]) for i in range(count)}
        for slice_items in (1, 7, 4096):
            assert pack_map_in_slices(mapping, slice_items) == pack(mapping), (count, slice_items)
