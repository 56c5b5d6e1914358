"""Locks with fencing tokens: grants, FIFO waiters, leases of log time, renewals, releases,
fenced writes, sweeps, the command format and snapshots; and, over random histories, that no
two owners ever hold a lock at once and that tokens only grow."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caddy.replication import KeyValueStore, SnapshotError, encode_batch, encode_kv
from caddy.replication.commands import CommandError, decode_batch
from caddy.replication.locks import (
    ACQUIRE,
    FENCE,
    MAX_WAITERS,
    RELEASE,
    RENEW,
    SWEEP,
    SWEEP_RETRY_MS,
    LockChange,
    LockTable,
    LockView,
    SweepTimer,
    decode_lock,
    encode_lock,
    is_lock_command,
    sweep_entry,
    with_locks,
)

NOT_ACQUIRED = {"ok": True, "value": {"token": None, "queued": False}}
QUEUED = {"ok": True, "value": {"token": None, "queued": True}}


def granted(token, expires_ms):
    return {"ok": True, "value": {"token": token, "expires_ms": expires_ms}}


def test_a_free_lock_is_granted_and_every_grant_takes_the_next_token_of_one_counter():
    table = LockTable()
    assert table.acquire("a", "alice", 1000, 0, now=10) == granted(1, 1010)
    assert table.acquire("b", "bob", 500, 0, now=20) == granted(2, 520)
    assert table.revision == 2
    assert table.view("a", "alice", 11) == LockView(1, 1010, False)
    assert table.holder("b", 21).owner == "bob"


def test_a_held_lock_is_not_acquired_without_a_wait_and_queued_with_one():
    table = LockTable()
    table.acquire("a", "alice", 1000, 0, now=0)
    assert table.acquire("a", "bob", 1000, 0, now=1) == NOT_ACQUIRED
    assert table.acquire("a", "bob", 1000, 5000, now=2) == QUEUED
    assert table.acquire("a", "bob", 1000, 5000, now=3) == QUEUED  # a retry: still once in line
    assert table.view("a", "bob", 4) == LockView(None, 0, True)
    assert table.take_changes() == []


def test_the_holder_acquiring_again_keeps_its_token_and_extends_but_never_shortens_its_lease():
    table = LockTable()
    table.acquire("a", "alice", 1000, 0, now=0)
    assert table.acquire("a", "alice", 2000, 0, now=500) == granted(1, 2500)
    assert table.acquire("a", "alice", 10, 0, now=600) == granted(1, 2500)
    assert table.revision == 1


def test_a_release_grants_the_next_waiter_in_order_with_a_greater_token():
    table = LockTable()
    table.acquire("a", "alice", 1000, 0, now=0)
    table.acquire("a", "bob", 300, 5000, now=1)
    table.acquire("a", "carol", 400, 5000, now=2)
    assert table.release("a", "alice", now=10) == {"ok": True, "value": True}
    assert table.take_changes() == [LockChange("a", "bob", 2, 310)]
    assert table.holder("a", 11).owner == "bob"
    assert table.release("a", "bob", now=20)["value"] is True
    assert table.take_changes() == [LockChange("a", "carol", 3, 420)]
    assert table.release("a", "carol", now=30)["value"] is True
    assert len(table) == 0  # a lock nobody holds or waits for is forgotten


def test_a_release_by_someone_who_does_not_hold_changes_nothing_and_a_waiter_stops_waiting():
    table = LockTable()
    table.acquire("a", "alice", 1000, 0, now=0)
    table.acquire("a", "bob", 1000, 5000, now=1)
    assert table.release("a", "mallory", now=2)["value"] is False
    assert table.release("a", "bob", now=3)["value"] is False  # bob cancels his wait
    assert table.take_changes() == [LockChange("a", "bob", None, 0)]
    assert table.holder("a", 4).owner == "alice"
    table.release("a", "alice", now=5)
    assert table.take_changes() == [] and len(table) == 0


def test_a_lapsed_lease_is_no_longer_held_and_passes_to_the_next_acquire():
    table = LockTable()
    table.acquire("a", "alice", 1000, 0, now=0)
    assert table.holder("a", 999) is not None and table.holder("a", 1000) is None
    assert not table.fence_holds("a", 1, now=1000)
    assert table.renew("a", "alice", 1, now=1000) == NOT_ACQUIRED
    assert table.acquire("a", "bob", 1000, 0, now=1001) == granted(2, 2001)
    assert table.renew("a", "alice", 1, now=1002) == NOT_ACQUIRED


def test_a_renewal_extends_the_lease_by_its_ttl_only_for_the_holder_and_its_token():
    table = LockTable()
    table.acquire("a", "alice", 1000, 0, now=0)
    assert table.renew("a", "alice", 1, now=900) == granted(1, 1900)
    assert table.fence_holds("a", 1, now=1500)
    assert table.renew("a", "alice", 7, now=901) == NOT_ACQUIRED
    assert table.renew("a", "bob", 1, now=902) == NOT_ACQUIRED
    assert table.renew("nothing", "alice", 1, now=903) == NOT_ACQUIRED
    assert len(table) == 1
    table.acquire("a", "alice", 10, 0, now=904)  # a shorter ttl from now on ...
    assert table.renew("a", "alice", 1, now=905) == granted(1, 1900)  # ... never cuts the lease


def test_a_lapse_grants_the_next_waiter_when_a_sweep_or_any_lock_command_sees_it():
    table = LockTable()
    table.acquire("a", "alice", 1000, 0, now=0)
    table.acquire("a", "bob", 1000, 60_000, now=1)
    assert table.next_deadline_ms() == 1000
    table.sweep(now=999)
    assert table.take_changes() == []
    table.sweep(now=1000)
    assert table.take_changes() == [LockChange("a", "bob", 2, 2000)]
    assert table.next_deadline_ms() == 2000


def test_a_waiter_whose_wait_ran_out_is_dropped_and_never_granted():
    table = LockTable()
    table.acquire("a", "alice", 10_000, 0, now=0)
    table.acquire("a", "bob", 1000, 500, now=100)
    assert table.next_deadline_ms() == 600
    table.sweep(now=600)
    assert table.take_changes() == [LockChange("a", "bob", None, 0)]
    assert table.view("a", "bob", 601) == LockView(None, 0, False)
    table.release("a", "alice", now=700)
    assert table.take_changes() == [] and len(table) == 0


def test_a_queue_has_a_bound_beyond_which_an_acquire_is_not_acquired():
    table = LockTable()
    table.acquire("a", "holder", 1000, 0, now=0)
    for i in range(MAX_WAITERS):
        assert table.acquire("a", f"w{i}", 1000, 5000, now=1) == QUEUED
    assert table.acquire("a", "late", 1000, 5000, now=1) == NOT_ACQUIRED


def test_the_sweep_timer_proposes_once_per_deadline_and_again_only_after_the_retry_time():
    timer = SweepTimer()
    assert not timer.due(None, 5) and not timer.due(100, 99)
    assert timer.due(100, 100)
    assert not timer.due(100, 100 + SWEEP_RETRY_MS - 1)
    assert timer.due(100, 100 + SWEEP_RETRY_MS)
    assert timer.due(200, 200 + SWEEP_RETRY_MS)  # a new deadline: at once


# ----- the state machine layer ----------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now


def machine():
    return with_locks(KeyValueStore())


def test_a_key_value_write_passes_to_the_inner_machine_and_lock_commands_do_not():
    _, locking = machine()
    put = encode_kv("put", "k", 1)
    assert not is_lock_command(put) and is_lock_command(encode_lock(ACQUIRE, "a", "o", 10))
    assert locking.apply(put) == {"ok": True, "value": None}
    assert locking.inner.read("k") == 1
    assert locking.apply(encode_lock(ACQUIRE, "k", "o", 10))["value"]["token"] == 1
    assert locking.inner.read("k") == 1 and len(locking.inner) == 1


def test_a_fenced_write_is_applied_only_while_its_token_holds_the_lock():
    _, locking = machine()
    clock = locking.clock = Clock()
    locking.apply(encode_lock(ACQUIRE, "a", "alice", 1000))
    fenced = encode_lock(FENCE, "a", "", 1, encode_kv("put", "out", "alice's"))
    assert locking.apply(fenced) == {"ok": True, "value": None}
    clock.now = 1000  # the lease lapsed
    refused = locking.apply(encode_lock(FENCE, "a", "", 1, encode_kv("put", "out", "late")))
    assert refused == {
        "ok": False,
        "error": "fenced_out",
        "detail": "token 1 does not hold lock 'a'",
    }
    assert locking.inner.read("out") == "alice's"
    locking.apply(encode_lock(ACQUIRE, "a", "bob", 1000))
    wrong = locking.apply(encode_lock(FENCE, "a", "", 1, encode_kv("put", "out", "old")))
    assert wrong["error"] == "fenced_out" and locking.inner.read("out") == "alice's"


def test_the_lock_layer_reads_the_log_time_of_the_session_layer():
    sessions, locking = machine()
    entry = encode_batch(5000, [("c1", 1, 0, encode_lock(ACQUIRE, "a", "alice", 100))])
    [result] = sessions.apply_batch(entry)
    assert result == granted(1, 5100)
    assert locking.clock() == 5000


def test_a_sweep_entry_is_a_command_outside_any_session_that_lets_time_pass_a_lease():
    sessions, locking = machine()
    sessions.apply_batch(encode_batch(0, [("c1", 1, 0, encode_lock(ACQUIRE, "a", "x", 100))]))
    sessions.apply_batch(encode_batch(1, [("c2", 1, 0, encode_lock(ACQUIRE, "a", "y", 100, 5000))]))
    log_time, [command] = decode_batch(sweep_entry(100))
    assert (log_time, command.client_id, decode_lock(command.payload)[0]) == (100, "", SWEEP)
    assert sessions.apply_batch(sweep_entry(100)) == [{"ok": True, "value": None}]
    assert locking.locks.take_changes() == [LockChange("a", "y", 2, 200)]


@pytest.mark.parametrize(
    "fields",
    [
        ("lock.nope", "a", "o", 1, 0),
        (ACQUIRE, "", "o", 1, 0),
        (ACQUIRE, "a", "", 1, 0),
        (ACQUIRE, "a", "o", 0, 0),
        (ACQUIRE, "a", "o", 1, -1),
        (ACQUIRE, "a" * 129, "o", 1, 0),
        (ACQUIRE, "a", "o", True, 0),
        (RENEW, "a", "o", 0, 0),
        (RELEASE, "a", "o", 1, 0),
        (FENCE, "a", "o", 1, b""),
        (FENCE, "a", "", 0, b""),
        (FENCE, "a", "", 1, "not bytes"),
        (SWEEP, "a", "", 0, 0),
    ],
)
def test_an_invalid_lock_command_is_refused_by_the_encoder_and_answered_invalid(fields):
    with pytest.raises(CommandError):
        encode_lock(*fields)
    _, locking = machine()
    result = locking.apply(msgpack.packb(list(fields), use_bin_type=True))
    assert result["ok"] is False and result["error"] == "invalid"
    assert len(locking.locks) == 0 and locking.locks.revision == 0


def test_a_snapshot_keeps_the_counter_holders_and_waiters_in_order():
    sessions, locking = machine()
    locking.apply(encode_kv("put", "k", "v"))
    locking.apply(encode_lock(ACQUIRE, "a", "alice", 1000))
    locking.apply(encode_lock(ACQUIRE, "a", "bob", 1000, 5000))
    locking.apply(encode_lock(ACQUIRE, "a", "carol", 1000, 5000))
    locking.apply(encode_lock(ACQUIRE, "b", "dave", 1000))
    data = sessions.snapshot()
    copy, copy_locking = machine()
    copy.restore(data)
    assert copy.snapshot() == data
    assert copy_locking.inner.read("k") == "v" and copy_locking.locks.revision == 2
    copy_locking.apply(encode_lock(RELEASE, "a", "alice"))
    assert copy_locking.locks.take_changes() == [LockChange("a", "bob", 3, 1000)]


def test_a_snapshot_written_before_locks_existed_restores_with_no_locks():
    old = KeyValueStore()
    old.put("k", "v")
    _, locking = machine()
    locking.apply(encode_lock(ACQUIRE, "a", "alice", 1000))
    locking.restore(old.snapshot())
    assert locking.inner.read("k") == "v"
    assert len(locking.locks) == 0 and locking.locks.revision == 0


def test_a_malformed_lock_snapshot_is_refused_and_the_state_kept():
    _, locking = machine()
    locking.apply(encode_lock(ACQUIRE, "a", "alice", 1000))
    bad = msgpack.packb(["caddy.locks", 1, [5, [["a", ["alice"], []]]], b""], use_bin_type=True)
    with pytest.raises(SnapshotError):
        locking.restore(bad)
    assert locking.locks.revision == 1 and locking.locks.holder("a", 0).owner == "alice"


# ----- random histories -----------------------------------------------------------------------

OWNERS = ("o1", "o2", "o3", "o4")
operations = st.lists(
    st.tuples(
        st.sampled_from(["acquire", "renew", "release", "sweep", "fence"]),
        st.sampled_from(("a", "b")),
        st.sampled_from(OWNERS),
        st.integers(1, 300),  # ttl, or how far the clock moves
        st.integers(0, 400),  # wait
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_no_two_owners_hold_a_lock_at_once_and_tokens_only_grow(history):
    """Against a model: at every step each lock has at most one live holder, a grant's token is
    above every earlier one, a fenced check passes only for the live holder's token, and a
    snapshot taken anywhere restores to the same table."""
    sessions, locking = machine()
    clock = locking.clock = Clock()
    table = locking.locks
    issued: list[int] = []  # each token once, when first seen
    tokens: dict[tuple[str, str], int] = {}

    def seen(name, owner, token):
        tokens[(name, owner)] = token
        if token not in issued:
            issued.append(token)

    for op, name, owner, number, wait in history:
        clock.now += number // 3
        if op == "acquire":
            value = table.acquire(name, owner, number, wait, clock.now)["value"]
            if value["token"] is not None:
                seen(name, owner, value["token"])
        elif op == "renew":
            table.renew(name, owner, tokens.get((name, owner), 1), clock.now)
        elif op == "release":
            table.release(name, owner, clock.now)
        elif op == "sweep":
            table.sweep(clock.now)
        else:
            token = tokens.get((name, owner), 1)
            holder = table.holder(name, clock.now)
            assert table.fence_holds(name, token, clock.now) == (
                holder is not None and holder.token == token
            )
        for change in table.take_changes():
            if change.token is not None:
                seen(change.name, change.owner, change.token)
        assert issued == sorted(set(issued))  # every new token above every earlier one
        for lock_name in ("a", "b"):
            live = [o for o in OWNERS if table.view(lock_name, o, clock.now).token is not None]
            assert len(live) <= 1
    copy, _ = machine()
    copy.restore(sessions.snapshot())
    assert copy.snapshot() == sessions.snapshot()
