"""The replicated service registry (caddy.replication.registry): its commands, its table, its
layer in the node's state machine stack, and its snapshots."""

from __future__ import annotations

import pytest

from caddy.replication.commands import CommandError, encode_batch, encode_kv
from caddy.replication.kv import KeyValueStore
from caddy.replication.node_stack import node_stack
from caddy.replication.packing import pack
from caddy.replication.registry import (
    ADD,
    DRAIN,
    REMOVE,
    UNDRAIN,
    WEIGHT,
    RegistryStateMachine,
    decode_registry,
    encode_registry,
    is_registry_command,
    seed_command,
)
from caddy.replication.state_machine import SnapshotError

SEED = seed_command([("api", [("b1", "tcp://127.0.0.1:9001", 2)]), ("web", [])])


def layer() -> RegistryStateMachine:
    machine = RegistryStateMachine(KeyValueStore())
    assert machine.apply(SEED)["value"] == {"seeded": True}
    return machine


def test_a_seed_fills_an_empty_registry_once():
    machine = layer()
    assert machine.registry.document() == {
        "api": [{"id": "b1", "address": "tcp://127.0.0.1:9001", "weight": 2, "draining": False}],
        "web": [],
    }
    later = seed_command([("other", [])])
    assert machine.apply(later)["value"] == {"seeded": False}  # the log is the truth now
    assert sorted(machine.registry.services) == ["api", "web"]


def test_add_weight_drain_undrain_remove():
    machine = layer()
    added = machine.apply(encode_registry(ADD, "web", "w1", "tcp://10.0.0.1:80", 3))
    assert added["value"] == [
        {"id": "w1", "address": "tcp://10.0.0.1:80", "weight": 3, "draining": False}
    ]
    machine.apply(encode_registry(WEIGHT, "web", "w1", weight=7))
    machine.apply(encode_registry(DRAIN, "web", "w1"))
    assert machine.registry.document_of("web")[0] == {
        "id": "w1",
        "address": "tcp://10.0.0.1:80",
        "weight": 7,
        "draining": True,
    }
    machine.apply(encode_registry(UNDRAIN, "web", "w1"))
    assert machine.registry.document_of("web")[0]["draining"] is False
    version = machine.registry.version
    assert machine.apply(encode_registry(REMOVE, "web", "w1"))["value"] == []
    assert machine.registry.version == version + 1


@pytest.mark.parametrize(
    "command, detail",
    [
        (
            encode_registry(ADD, "nope", "x", "tcp://h:1", 1),
            "no service 'nope' (services: api, web)",
        ),
        (encode_registry(ADD, "api", "b1", "tcp://h:1", 1), "b1 is a backend of api already"),
        (encode_registry(REMOVE, "api", "zz"), "no backend 'zz' in api"),
        (encode_registry(DRAIN, "web", "zz"), "no backend 'zz' in web"),
    ],
)
def test_changes_that_make_no_sense_are_refused_and_change_nothing(command, detail):
    machine = layer()
    before = (machine.registry.document(), machine.registry.version)
    result = machine.apply(command)
    assert result == {"ok": False, "error": "invalid", "detail": detail}
    assert (machine.registry.document(), machine.registry.version) == before


@pytest.mark.parametrize(
    "fields, message",
    [
        (("grow", "api", "b", "", 0, 0), "unknown operation"),
        ((ADD, "api", "b", "10.0.0.1:80", 1, 0), "an address is tcp://HOST:PORT"),
        ((ADD, "api", "b", "tcp://h:1", 0, 0), "a weight is an integer 1 to"),
        ((WEIGHT, "api", "b", "", True, 0), "a weight is an integer 1 to"),
        ((REMOVE, "api", "b", "tcp://h:1", 0, 0), "remove takes a service and a backend only"),
        ((ADD, "", "b", "tcp://h:1", 1, 0), "service must be a string"),
        (("seed", "x", "", "", 0, []), "a seed takes its services only"),
        (("seed", "", "", "", 0, [["api", [["b", "tcp://h:1"]]]]), "a seeded backend is"),
    ],
)
def test_malformed_commands_are_command_errors(fields, message):
    with pytest.raises(CommandError, match=message):
        encode_registry(*fields)


def test_a_malformed_command_in_the_log_is_an_invalid_result_not_a_crash():
    machine = layer()
    bogus = pack(["add", "api", "b2", "not-an-address", 1, 0])
    assert is_registry_command(bogus)
    assert machine.apply(bogus)["error"] == "invalid"


def test_other_commands_pass_to_the_inner_machine():
    machine = layer()
    assert not is_registry_command(encode_kv("put", "k", 1))
    machine.apply(encode_kv("put", "k", 1))
    assert machine.inner.read("k") == 1
    assert decode_registry(encode_registry(DRAIN, "api", "b1"))[0] == DRAIN


def test_snapshots_carry_the_registry_and_the_inner_state():
    machine = layer()
    machine.apply(encode_registry(ADD, "web", "w1", "tcp://10.0.0.1:80", 1))
    machine.apply(encode_kv("put", "k", "v"))
    copy = RegistryStateMachine(KeyValueStore())
    changes = []
    copy.on_change = lambda: changes.append(copy.registry.version)
    copy.restore(machine.snapshot())
    assert copy.registry.document() == machine.registry.document()
    assert copy.registry.seeded and copy.inner.read("k") == "v"
    assert changes == [machine.registry.version]  # a restore tells the balancer to refresh


def test_a_snapshot_from_before_the_registry_restores_an_unseeded_one():
    old = KeyValueStore()
    old.apply(encode_kv("put", "k", 1))
    machine = layer()
    machine.restore(old.snapshot())
    assert not machine.registry.seeded and machine.registry.document() == {}
    assert machine.inner.read("k") == 1


def test_a_corrupt_registry_snapshot_is_refused_and_changes_nothing():
    machine = layer()
    bad = pack(["caddy.registry", 1, [True, "x", "y"], KeyValueStore().snapshot()])
    with pytest.raises(SnapshotError):
        machine.restore(bad)
    assert sorted(machine.registry.services) == ["api", "web"]


def test_the_node_stack_applies_registry_commands_exactly_once():
    """Through the session layer, as a client's write arrives in the log."""
    stack = node_stack(KeyValueStore())
    stack.sessions.apply_batch(encode_batch(1, [("", 0, 0, SEED)]))
    add = encode_registry(ADD, "web", "w1", "tcp://10.0.0.1:80", 1)
    entry = encode_batch(2, [("client-a", 1, 0, add)])
    first = stack.sessions.apply_batch(entry)
    again = stack.sessions.apply_batch(entry)  # a retry after a failover: the same answer
    assert first == again and first[0]["ok"] is True
    assert len(stack.registry.registry.document_of("web")) == 1
