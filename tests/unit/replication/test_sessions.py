"""Exactly-once sessions: dedup, stale and pipelined seqs, pruning, expiry by log time, eviction,
malformed commands, snapshots, and replicas that stay identical whatever path the log takes."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caddy.replication import (
    KeyValueStore,
    SessionStateMachine,
    SnapshotError,
    encode_batch,
    encode_command,
    encode_kv,
)


class RecordingMachine:
    """Answers each payload with how many commands it has applied, so a re-apply shows."""

    def __init__(self):
        self.applied = []

    def apply(self, command):
        if command == b"boom":
            raise RuntimeError("boom")
        self.applied.append(command)
        return len(self.applied)

    def snapshot(self):
        return msgpack.packb(self.applied)

    def restore(self, data):
        self.applied = msgpack.unpackb(data)


def write(client, seq, payload, time=0, ack=0):
    return encode_command(client, seq, time, payload, ack_below=ack)


def kv_write(client, seq, op, key, value=None, expected=None, time=0, ack=0):
    return write(client, seq, encode_kv(op, key, value, expected), time, ack)


def test_a_retry_returns_the_cached_result_without_applying_again():
    machine = SessionStateMachine(RecordingMachine())
    first = machine.apply(write("c", 1, b"x"))
    assert machine.apply(write("c", 1, b"x", time=5)) == first == 1
    assert machine.inner.applied == [b"x"]


def test_a_retried_cas_reports_true_again_and_does_not_swap_twice():
    machine = SessionStateMachine(KeyValueStore())
    machine.apply(kv_write("a", 1, "put", "k", "old"))
    swap = kv_write("a", 2, "cas", "k", "new", expected="old", ack=2)
    assert machine.apply(swap) == {"ok": True, "value": True}
    machine.apply(kv_write("b", 1, "put", "k", "old"))
    assert machine.apply(swap) == {"ok": True, "value": True}
    assert machine.inner.read("k") == "old"


def test_seq_below_the_acknowledged_floor_is_stale_and_not_applied():
    machine = SessionStateMachine(RecordingMachine())
    for seq in (1, 2, 3):
        machine.apply(write("c", seq, b"%d" % seq, ack=seq))
    result = machine.apply(write("c", 2, b"2", ack=2))
    assert result["ok"] is False and result["error"] == "stale"
    assert machine.inner.applied == [b"1", b"2", b"3"]


def test_pipelined_seqs_apply_once_in_any_order_and_retries_hit_the_cache():
    machine = SessionStateMachine(RecordingMachine())
    answers = {seq: machine.apply(write("c", seq, b"%d" % seq, ack=1)) for seq in (3, 1, 2)}
    assert answers == {3: 1, 1: 2, 2: 3}
    assert list(machine.session("c").results) == [1, 2, 3]
    for seq in (1, 2, 3):
        assert machine.apply(write("c", seq, b"%d" % seq, ack=1)) == answers[seq]
    assert len(machine.inner.applied) == 3


def test_ack_below_prunes_the_results_the_client_acknowledged():
    machine = SessionStateMachine(RecordingMachine())
    for seq in range(1, 6):
        machine.apply(write("c", seq, b"w", ack=1))
    machine.apply(write("c", 6, b"w", ack=4))
    session = machine.session("c")
    assert session.floor == 4 and list(session.results) == [4, 5, 6]
    assert machine.apply(write("c", 3, b"w", ack=1))["error"] == "stale"
    assert machine.apply(write("c", 5, b"w", ack=4)) == 5


def test_the_result_cache_is_bounded_and_its_floor_rises_with_it():
    machine = SessionStateMachine(RecordingMachine(), max_results_per_session=4)
    for seq in range(1, 7):
        machine.apply(write("c", seq, b"w", ack=1))
    session = machine.session("c")
    assert list(session.results) == [3, 4, 5, 6] and session.floor == 3
    assert machine.apply(write("c", 2, b"w", ack=1))["error"] == "stale"
    assert len(machine.inner.applied) == 6


def test_an_unapplied_seq_inside_the_window_is_applied():
    machine = SessionStateMachine(RecordingMachine())
    machine.apply(write("c", 2, b"second", ack=1))
    machine.apply(write("c", 1, b"first", ack=1))
    assert machine.inner.applied == [b"second", b"first"]


def test_sessions_idle_longer_than_the_ttl_of_log_time_expire():
    machine = SessionStateMachine(RecordingMachine(), session_ttl_ms=1000)
    machine.apply(write("a", 1, b"w", time=0))
    machine.apply(write("b", 1, b"w", time=1000))
    assert machine.session("a") is not None
    machine.apply(write("b", 2, b"w", time=1001, ack=2))
    assert machine.session("a") is None and machine.session_count == 1


def test_activity_keeps_a_session_alive():
    machine = SessionStateMachine(RecordingMachine(), session_ttl_ms=1000)
    machine.apply(write("a", 1, b"w", time=0))
    machine.apply(write("a", 1, b"w", time=800))  # even a retry is activity
    machine.apply(write("b", 1, b"w", time=1500))
    assert machine.session("a").last_active_ms == 800


def test_sessionless_commands_advance_log_time_and_expire_sessions():
    machine = SessionStateMachine(RecordingMachine(), session_ttl_ms=10)
    machine.apply(write("a", 1, b"w", time=0))
    machine.apply(write("", 0, b"noop", time=11))
    assert machine.session("a") is None and machine.log_time_ms == 11


def test_log_time_never_goes_back_when_a_leader_stamps_an_earlier_time():
    machine = SessionStateMachine(RecordingMachine(), session_ttl_ms=1000)
    machine.apply(write("a", 1, b"w", time=5000))
    machine.apply(write("b", 1, b"w", time=100))
    assert machine.log_time_ms == 5000 and machine.session("b").last_active_ms == 5000
    machine.apply(write("c", 1, b"w", time=6000))
    assert machine.session("a") and machine.session("b")
    machine.apply(write("c", 2, b"w", time=6001, ack=2))
    assert machine.session("a") is None and machine.session("b") is None


def test_an_unknown_client_that_had_answers_before_gets_session_expired_and_nothing_applies():
    machine = SessionStateMachine(RecordingMachine(), session_ttl_ms=10)
    machine.apply(write("a", 1, b"w", time=0))
    machine.apply(write("b", 1, b"w", time=100))
    result = machine.apply(write("a", 2, b"w", time=100, ack=2))
    assert result["ok"] is False and result["error"] == "session_expired"
    assert machine.session("a") is None and len(machine.inner.applied) == 2


def test_an_unknown_client_with_nothing_acknowledged_opens_a_session():
    machine = SessionStateMachine(RecordingMachine())
    assert machine.apply(write("new", 3, b"w", ack=1)) == 1
    assert machine.session("new").results == {3: 1}


def test_beyond_max_sessions_the_least_recently_active_is_evicted():
    machine = SessionStateMachine(RecordingMachine(), max_sessions=2)
    machine.apply(write("a", 1, b"w", time=1))
    machine.apply(write("b", 1, b"w", time=2))
    machine.apply(write("a", 2, b"w", time=3))
    machine.apply(write("c", 1, b"w", time=4))
    assert machine.session("b") is None
    assert machine.session("a") and machine.session("c") and machine.session_count == 2


def test_commands_without_a_session_are_not_deduplicated():
    machine = SessionStateMachine(RecordingMachine())
    noop = write("", 0, b"noop")
    assert machine.apply(noop) == 1 and machine.apply(noop) == 2
    assert machine.session_count == 0


MALFORMED = [
    b"",
    b"\xc1",
    b"\x00garbage",
    msgpack.packb([1, "c", 0, 0, 5, b""]),
    msgpack.packb([1, "c", 2, 3, 5, b""]),
    msgpack.packb([9, "c", 1, 0, 5, b""]),
    msgpack.packb({"seq": 1}),
]


@pytest.mark.parametrize("data", MALFORMED)
def test_a_malformed_command_is_the_same_error_on_every_replica_and_changes_nothing(data):
    replicas = [SessionStateMachine(KeyValueStore()) for _ in range(2)]
    results = []
    for machine in replicas:
        machine.apply(kv_write("c", 1, "put", "k", 1, time=7))
        before = machine.snapshot()
        results.append(machine.apply(data))
        assert machine.snapshot() == before
    assert results[0] == results[1]
    assert results[0]["ok"] is False and results[0]["error"] == "malformed"


@settings(max_examples=200)
@given(st.binary(max_size=48))
def test_arbitrary_bytes_never_raise_and_agree_across_replicas(data):
    results = [SessionStateMachine(KeyValueStore()).apply(data) for _ in range(2)]
    assert results[0] == results[1]


def test_an_invalid_kv_payload_inside_a_session_is_cached_like_any_result():
    machine = SessionStateMachine(KeyValueStore())
    bad = write("c", 1, msgpack.packb(["get", "k", None, None]))
    first = machine.apply(bad)
    assert first["error"] == "invalid" and machine.apply(bad) is first


def test_a_batch_applies_each_write_once_in_order_and_retries_hit_the_cache():
    machine = SessionStateMachine(RecordingMachine())
    first = machine.apply_batch(encode_batch(5, [("a", 1, 0, b"x"), ("b", 1, 0, b"y")]))
    assert first == [1, 2]
    # a retried write (a, 1) rides in a later batch beside a new one: cached, not re-applied
    again = machine.apply_batch(encode_batch(6, [("a", 1, 0, b"x"), ("a", 2, 1, b"z")]))
    assert again == [1, 3]
    assert machine.inner.applied == [b"x", b"y", b"z"]
    assert machine.log_time_ms == 6
    assert machine.apply(write("a", 2, b"z", time=6, ack=1)) == 3  # and single commands agree


def test_a_malformed_write_in_a_batch_is_malformed_and_the_others_apply():
    machine = SessionStateMachine(RecordingMachine())
    data = msgpack.packb([2, 3, [["a", 1, 0, b"x"], ["b", 0, 0, b"y"], ["c", 1, 0, b"z"]]])
    results = machine.apply_batch(data)
    assert results[0] == 1 and results[2] == 2
    assert results[1]["error"] == "malformed"
    assert machine.inner.applied == [b"x", b"z"]


def test_a_log_of_single_command_entries_replays_through_apply_batch_as_through_apply():
    log = [write("a", 1, b"x", time=5), write("b", 1, b"y", time=6), write("a", 1, b"x", time=7)]
    one_by_one, batched = (
        SessionStateMachine(RecordingMachine()),
        SessionStateMachine(RecordingMachine()),
    )
    assert [[one_by_one.apply(entry)] for entry in log] == [batched.apply_batch(e) for e in log]
    assert batched.snapshot() == one_by_one.snapshot()
    assert batched.inner.applied == [b"x", b"y"]


@pytest.mark.parametrize("data", [b"", b"\xc1", msgpack.packb([2, 3]), msgpack.packb([1, 3, []])])
def test_a_malformed_batch_applies_nothing(data):
    machine = SessionStateMachine(RecordingMachine())
    machine.apply(write("a", 1, b"x", time=7))
    before = machine.snapshot()
    assert machine.apply_batch(data) == []
    assert machine.snapshot() == before


def test_a_batch_advances_log_time_and_expires_idle_sessions():
    machine = SessionStateMachine(RecordingMachine(), session_ttl_ms=100)
    machine.apply_batch(encode_batch(10, [("old", 1, 0, b"x")]))
    machine.apply_batch(encode_batch(200, [("new", 1, 0, b"y")]))
    assert machine.session("old") is None and machine.session("new") is not None


def test_a_raising_inner_machine_gives_apply_failed_once_and_the_applier_goes_on():
    machine = SessionStateMachine(RecordingMachine())
    boom = write("c", 1, b"boom")
    result = machine.apply(boom)
    assert result == {"ok": False, "error": "apply_failed", "detail": "RuntimeError: boom"}
    assert machine.apply(boom) == result
    assert machine.apply(write("c", 2, b"fine")) == 1


def test_sessions_survive_snapshot_and_restore():
    source = SessionStateMachine(RecordingMachine())
    for seq in (1, 2, 3):
        source.apply(write("c", seq, b"%d" % seq, time=seq, ack=min(seq, 2)))
    source.apply(write("d", 1, b"d", time=9))
    target = SessionStateMachine(RecordingMachine())
    target.apply(write("other", 1, b"o"))
    target.restore(source.snapshot())
    assert target.snapshot() == source.snapshot()
    assert target.log_time_ms == 9 and target.session("other") is None
    assert target.apply(write("c", 3, b"3", time=10, ack=2)) == 3
    assert target.apply(write("c", 1, b"1", time=10, ack=1))["error"] == "stale"
    assert target.inner.applied == [b"1", b"2", b"3", b"d"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        msgpack.packb([1, 0, []]),
        msgpack.packb([2, 0, [], b""]),
        msgpack.packb([1, -1, [], b""]),
        msgpack.packb([1, 0, [], "not bytes"]),
        msgpack.packb([1, 0, [["c", 0, 0]], b""], use_bin_type=True),
        msgpack.packb([1, 0, [["c", 0, 0, [[1]]]], b""], use_bin_type=True),
        msgpack.packb([1, 0, [[7, 0, 0, []]], b""], use_bin_type=True),
        msgpack.packb([1, 0, [], b"\xc1"], use_bin_type=True),  # the inner machine refuses it
    ],
)
def test_a_bad_snapshot_raises_snapshot_error_and_keeps_the_state(data):
    machine = SessionStateMachine(KeyValueStore())
    machine.apply(kv_write("c", 1, "put", "k", 1, time=3))
    before = machine.snapshot()
    with pytest.raises(SnapshotError):
        machine.restore(data)
    assert machine.snapshot() == before


@pytest.mark.parametrize(
    "settings_", [{"session_ttl_ms": 0}, {"max_sessions": 0}, {"max_results_per_session": 0}]
)
def test_settings_must_be_positive(settings_):
    with pytest.raises(ValueError):
        SessionStateMachine(KeyValueStore(), **settings_)


# ----- determinism: replicas fed the same log end identical, also through a snapshot -----------

CLIENTS = ["a", "b", "c", "d"]
WRITE = st.tuples(
    st.just("write"),
    st.sampled_from(CLIENTS),
    st.integers(1, 6),  # seq: retries, gaps and reorders arise by chance
    st.integers(0, 3),  # how far ack_below lags behind seq
    st.integers(-50, 250),  # time step; negative: a leader with a slower clock
    st.sampled_from(["put", "delete", "cas"]),
    st.sampled_from(["x", "y"]),
    st.integers(0, 2),
)
NOOP = st.tuples(st.just("noop"), st.integers(-50, 250))
GARBAGE = st.tuples(st.just("garbage"), st.binary(max_size=6))
# Mostly client writes, a few leader no-ops and corrupt entries.
ENTRY = st.integers(0, 9).flatmap(lambda k: GARBAGE if k == 0 else NOOP if k == 1 else WRITE)


def build_log(entries):
    log, clock = [], 0
    for entry in entries:
        if entry[0] == "garbage":
            log.append(entry[1])
            continue
        clock = max(0, clock + entry[-1] if entry[0] == "noop" else clock + entry[4])
        if entry[0] == "noop":
            log.append(encode_command("", 0, clock, encode_kv("delete", "none")))
            continue
        _, client, seq, ack_lag, _, op, key, value = entry
        expected = value - 1 if op == "cas" else None
        payload = encode_kv(op, key, None if op == "delete" else value, expected)
        log.append(encode_command(client, seq, clock, payload, ack_below=max(0, seq - ack_lag)))
    return log


def replica():
    return SessionStateMachine(
        KeyValueStore(), session_ttl_ms=600, max_sessions=3, max_results_per_session=4
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(ENTRY, max_size=60), st.data())
def test_replicas_end_identical_also_through_snapshot_and_restore(entries, data):
    log = build_log(entries)
    cut = data.draw(st.integers(0, len(log)), label="snapshot after")
    straight, first_half = replica(), replica()
    straight_results = [straight.apply(command) for command in log]
    restored_results = [first_half.apply(command) for command in log[:cut]]
    restored = replica()
    restored.restore(first_half.snapshot())
    restored_results += [restored.apply(command) for command in log[cut:]]
    assert restored_results == straight_results
    assert restored.snapshot() == straight.snapshot()
    assert restored.log_time_ms == straight.log_time_ms


@pytest.mark.parametrize("inner", [KeyValueStore, RecordingMachine], ids=["with-view", "without"])
def test_a_snapshot_view_makes_the_bytes_of_the_state_when_it_was_taken(inner):
    """With or without the inner machine's own view (RecordingMachine has none)."""
    machine = SessionStateMachine(inner())
    for seq in range(1, 6):
        machine.apply(encode_command("c1", seq, 1000 + seq, encode_kv("put", f"k{seq}", seq)))
    expected = machine.snapshot()
    view = machine.snapshot_view()
    machine.apply(encode_command("c1", 6, 2000, encode_kv("put", "k6", 6)))  # goes on applying
    machine.apply(encode_command("c2", 1, 2001, encode_kv("delete", "k1")))
    assert view() == expected


def test_a_subclass_that_extends_snapshot_is_not_snapshotted_through_the_inherited_view():
    """KeyValueStore's view makes the bare map's bytes: a subclass that adds to `snapshot()`
    must have its own `snapshot()` taken, or its snapshots could not be restored."""

    class CountingStore(KeyValueStore):
        def __init__(self):
            super().__init__()
            self.writes = 0

        def apply(self, command):
            self.writes += 1
            return super().apply(command)

        def snapshot(self):
            return msgpack.packb([self.writes, super().snapshot()])

        def restore(self, data):
            self.writes, inner = msgpack.unpackb(data)
            super().restore(inner)

    machine = SessionStateMachine(CountingStore())
    machine.apply(encode_command("c1", 1, 1000, encode_kv("put", "k", 1)))
    restored = SessionStateMachine(CountingStore())
    restored.restore(machine.snapshot())
    assert restored.inner.writes == 1 and restored.inner.read("k") == 1
