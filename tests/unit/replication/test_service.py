"""The leader's request bookkeeping: redirects, refusals, entries cut by size, replies to commits,
term changes, timeouts, lost leadership, and reads through their three stages."""

from caddy.replication import KeyValueStore, SessionStateMachine
from caddy.replication.commands import decode_batch
from caddy.replication.locks import LockChange, LockView
from caddy.replication.requests import parse_request
from caddy.replication.service import (
    LOCK_NOT_WAITING,
    LOCK_STILL_QUEUED,
    NO_READS,
    KeyValueService,
)
from caddy.replication.state_machine import ErrorCode, error_result, ok_result
from caddy.sizes import MIN_MESSAGE_BYTES, max_write_bytes
from tests.sizing import value_for_payload

TIMEOUT_S = 5.0


def service(read=None, max_entry_bytes=256 * 1024, max_message_bytes=16 << 20):
    return KeyValueService(
        node_id="n1",
        request_timeout_s=TIMEOUT_S,
        read=read,
        max_entry_bytes=max_entry_bytes,
        max_message_bytes=max_message_bytes,
    )


def put(seq, key="k", value="v", client="c1"):
    return "kv.put", {"key": key, "value": value, "client": client, "seq": seq, "ack": 0}


def lead(kv, route, kind, body):
    kv.request(route, kind, body, leader=True, leader_hint="n1")


def retry_error(text):
    return {"error": text, "retry": True}


def test_a_follower_redirects_writes_and_reads_to_the_leader_it_knows():
    kv = service(read=lambda key: 1)
    kv.request("w", *put(1), leader=False, leader_hint="n2")
    kv.request("r", "kv.get", {"key": "k"}, leader=False, leader_hint=None)
    assert kv.take_replies() == [
        ("w", "kv.redirect", {"leader": "n2"}),
        ("r", "kv.redirect", {"leader": None}),
    ]
    assert kv.take_proposal(0) is None and kv.take_read_round() is None
    assert kv.take_replies() == []


def test_without_quorum_writes_and_reads_are_answered_no_quorum_at_once_and_not_proposed():
    kv = service(read=lambda key: 1)
    kv.has_quorum = False
    lead(kv, "w", *put(1))
    lead(kv, "r", "kv.get", {"key": "k"})
    kv.request("f", *put(1, client="c2"), leader=False, leader_hint="n2")
    no_quorum = {"error": "this node cannot reach a quorum", "code": "no_quorum", "retry": True}
    assert kv.take_replies() == [("w", "kv.error", no_quorum), ("r", "kv.error", no_quorum)] + [
        ("f", "kv.error", no_quorum)
    ]
    assert kv.take_proposal(0) is None and kv.take_read_round() is None
    kv.has_quorum = True
    lead(kv, "w", *put(1))
    assert kv.take_replies() == [] and kv.take_proposal(0) is not None


def test_a_malformed_request_is_refused_for_good_even_by_a_follower():
    kv = service()
    kv.request("a", "kv.nope", {}, leader=False, leader_hint="n2")
    lead(kv, "b", "kv.put", {"key": "k", "value": 1, "client": "c1", "seq": 0, "ack": 0})
    assert kv.take_replies() == [
        ("a", "kv.error", {"error": "unknown request 'kv.nope'", "retry": False}),
        (
            "b",
            "kv.error",
            {"error": "a write needs a client id, a seq >= 1 and 0 <= ack <= seq", "retry": False},
        ),
    ]
    assert kv.take_proposal(0) is None


def test_a_read_on_a_machine_without_read_is_refused():
    kv = service(read=None)
    lead(kv, "r", "kv.get", {"key": "k"})
    assert kv.take_replies() == [("r", "kv.error", {"error": NO_READS, "retry": False})]
    assert NO_READS == "this node's state machine has no read(key) method"
    assert kv.take_read_round() is None


def test_queued_writes_become_one_entry_stamped_with_the_log_time():
    kv = service()
    for seq in (1, 2, 3):
        lead(kv, f"r{seq}", *put(seq))
    proposal = kv.take_proposal(log_time_ms=1234)
    assert proposal.routes == [["r1", "r2", "r3"]]
    (entry,) = proposal.entries
    log_time_ms, commands = decode_batch(entry)
    assert log_time_ms == 1234
    assert [command.seq for command in commands] == [1, 2, 3]
    assert kv.take_proposal(1235) is None  # taken once
    assert kv.pending_writes == 0  # not proposed yet


def test_writes_are_cut_into_entries_by_size_and_a_large_write_gets_its_own():
    small = parse_request(*put(1)).size
    large_value = "x" * (3 * small)
    kv = service(max_entry_bytes=2 * small)
    writes = [put(1), put(2), put(3), put(4, value=large_value), put(5), put(6), put(7)]
    for seq, (kind, body) in enumerate(writes, 1):
        lead(kv, f"r{seq}", kind, body)
    proposal = kv.take_proposal(0)
    assert proposal.routes == [["r1", "r2"], ["r3"], ["r4"], ["r5", "r6"], ["r7"]]
    seqs = [[command.seq for command in decode_batch(entry)[1]] for entry in proposal.entries]
    assert seqs == [[1, 2], [3], [4], [5, 6], [7]]


def test_a_write_over_the_largest_size_is_refused_before_it_is_proposed():
    limit = MIN_MESSAGE_BYTES
    largest = max_write_bytes(limit)
    kv = service(max_message_bytes=limit)
    lead(kv, "fits", *put(1, value=value_for_payload("put", "k", largest)))
    lead(kv, "over", *put(2, value=value_for_payload("put", "k", largest + 1)))
    # Refused on a follower too: the size does not depend on who leads.
    kv.request(
        "over-f",
        *put(3, value=value_for_payload("put", "k", largest + 1)),
        leader=False,
        leader_hint=None,
    )
    replies = kv.take_replies()
    assert [route for route, _, _ in replies] == ["over", "over-f"]
    for _, kind, body in replies:
        assert kind == "kv.error"
        assert body["code"] == "value_too_large" and body["retry"] is False
        assert (body["size"], body["limit"]) == (largest + 1, largest)
        assert body["max_message_bytes"] == limit
        assert f"{largest + 1} bytes, over the largest of {largest} bytes" in body["error"]
    proposal = kv.take_proposal(0)
    assert proposal.routes == [["fits"]]  # nothing of the refused writes was proposed


def test_entries_stay_within_the_largest_write_when_messages_are_small():
    limit = MIN_MESSAGE_BYTES
    kv = service(max_message_bytes=limit)
    value = "x" * (max_write_bytes(limit) // 3)
    for seq in range(1, 7):
        lead(kv, f"r{seq}", *put(seq, value=value))
    proposal = kv.take_proposal(0)
    assert len(proposal.entries) == 3  # two writes of a third each per entry
    assert all(len(entry) <= limit - 2048 for entry in proposal.entries)


def test_a_refused_proposal_redirects_every_write_in_it():
    kv = service(max_entry_bytes=1)  # one entry per write
    for seq in (1, 2, 3):
        lead(kv, f"r{seq}", *put(seq))
    proposal = kv.take_proposal(0)
    assert len(proposal.entries) == 3
    kv.proposal_refused(proposal, "n3")
    assert kv.take_replies() == [(f"r{seq}", "kv.redirect", {"leader": "n3"}) for seq in (1, 2, 3)]
    assert kv.pending_writes == 0


def test_committed_writes_are_answered_with_the_state_machine_results():
    store = KeyValueStore()
    machine = SessionStateMachine(store)
    kv = service(read=store.read)
    lead(kv, "put", *put(1, key="a", value=7))
    lead(
        kv,
        "cas",
        "kv.cas",
        {"key": "a", "expected": 7, "new": 8, "client": "c1", "seq": 2, "ack": 0},
    )
    lead(
        kv,
        "miss",
        "kv.cas",
        {"key": "a", "expected": 7, "new": 9, "client": "c1", "seq": 3, "ack": 0},
    )
    lead(kv, "del", "kv.delete", {"key": "a", "client": "c1", "seq": 4, "ack": 4})
    lead(kv, "stale", *put(3, key="a", value=1))  # below the floor the ack of seq 4 raised
    proposal = kv.take_proposal(10)
    kv.proposed(proposal, first_index=5, term=2, now=0.0)
    assert kv.pending_writes == 5
    (entry,) = proposal.entries
    results = machine.apply_batch(entry)
    stale = results[-1]
    assert stale["error"] == ErrorCode.STALE
    kv.committed(5, 2, results)
    assert kv.take_replies() == [
        ("put", "kv.ok", {"value": None}),
        ("cas", "kv.ok", {"value": True}),
        ("miss", "kv.ok", {"value": False}),
        ("del", "kv.ok", {"value": True}),
        (
            "stale",
            "kv.error",
            {"error": f"stale: {stale['detail']}", "code": "stale", "retry": False},
        ),
    ]
    assert kv.pending_writes == 0
    assert store.read("a") is None


def test_every_kind_of_result_becomes_its_reply():
    kv = service()
    for seq in (1, 2, 3, 4):
        lead(kv, f"r{seq}", *put(seq))
    kv.proposed(kv.take_proposal(0), first_index=1, term=1, now=0.0)
    results = [ok_result("v"), error_result(ErrorCode.INVALID, "bad payload"), 42, {"ok": False}]
    kv.committed(1, 1, results)
    assert kv.take_replies() == [
        ("r1", "kv.ok", {"value": "v"}),
        ("r2", "kv.error", {"error": "invalid: bad payload", "code": "invalid", "retry": False}),
        ("r3", "kv.ok", {"value": 42}),
        ("r4", "kv.error", {"error": "None: None", "code": None, "retry": False}),
    ]


def test_each_entry_answers_its_own_writes_and_other_indexes_answer_nobody():
    kv = service(max_entry_bytes=1)
    for seq in (1, 2):
        lead(kv, f"r{seq}", *put(seq))
    kv.proposed(kv.take_proposal(0), first_index=8, term=3, now=0.0)
    assert kv.pending_writes == 2
    kv.committed(7, 3, [])  # a follower's or an earlier leader's entry
    assert kv.take_replies() == []
    kv.committed(9, 3, [ok_result(2)])
    assert kv.take_replies() == [("r2", "kv.ok", {"value": 2})]
    assert kv.pending_writes == 1
    kv.committed(8, 3, [ok_result(1)])
    kv.committed(8, 3, [ok_result(1)])  # answered once
    assert kv.take_replies() == [("r1", "kv.ok", {"value": 1})]
    assert kv.pending_writes == 0


def test_another_terms_entry_at_the_index_means_leadership_changed():
    kv = service()
    for seq in (1, 2):
        lead(kv, f"r{seq}", *put(seq))
    kv.proposed(kv.take_proposal(0), first_index=4, term=2, now=0.0)
    kv.committed(4, 3, [])  # the new leader's no-op
    error = retry_error("leadership changed")
    assert kv.take_replies() == [("r1", "kv.error", error), ("r2", "kv.error", error)]
    assert kv.pending_writes == 0


def test_an_entry_whose_results_do_not_match_its_writes_is_refused_for_good():
    kv = service()
    for seq in (1, 2):
        lead(kv, f"r{seq}", *put(seq))
    kv.proposed(kv.take_proposal(0), first_index=4, term=2, now=0.0)
    kv.committed(4, 2, [ok_result()])
    error = {"error": "entry does not match its writes", "retry": False}
    assert kv.take_replies() == [("r1", "kv.error", error), ("r2", "kv.error", error)]
    assert kv.pending_writes == 0


def test_writes_expire_only_after_the_request_timeout():
    kv = service(max_entry_bytes=1)
    lead(kv, "early", *put(1))
    kv.proposed(kv.take_proposal(0), first_index=1, term=1, now=100.0)
    lead(kv, "late", *put(2))
    kv.proposed(kv.take_proposal(0), first_index=2, term=1, now=101.0)
    kv.expire(100.0 + TIMEOUT_S)  # at the deadline: not past it
    assert kv.take_replies() == []
    kv.expire(100.0 + TIMEOUT_S + 0.5)
    assert kv.take_replies() == [("early", "kv.error", retry_error("request timeout"))]
    assert kv.pending_writes == 1
    kv.committed(1, 1, [ok_result()])  # committed after all: already answered
    kv.committed(2, 1, [ok_result()])
    assert kv.take_replies() == [("late", "kv.ok", {"value": None})]


def test_failing_pending_answers_every_waiting_client_once_with_retry():
    kv = service(read=lambda key: key)
    lead(kv, "proposed", *put(1))
    kv.proposed(kv.take_proposal(0), first_index=1, term=1, now=0.0)
    lead(kv, "read-ready", "kv.get", {"key": "k"})
    kv.read_confirmed(kv.take_read_round(), index=5)
    lead(kv, "read-in-flight", "kv.get", {"key": "k"})
    kv.take_read_round()
    lead(kv, "queued", *put(2))
    lead(kv, "read-queued", "kv.get", {"key": "k"})
    kv.fail_pending("leadership lost")
    error = retry_error("leadership lost")
    assert kv.take_replies() == [
        ("proposed", "kv.error", error),
        ("queued", "kv.error", error),
        ("read-queued", "kv.error", error),
        ("read-ready", "kv.error", error),
        ("read-in-flight", "kv.error", error),
    ]
    assert kv.pending_writes == 0
    assert kv.take_proposal(0) is None and kv.take_read_round() is None
    kv.committed(1, 1, [ok_result()])
    kv.serve_reads(10)
    kv.fail_pending("node stopping")
    assert kv.take_replies() == []


def test_one_read_round_serves_every_read_queued_before_it_once_applied():
    store = KeyValueStore()
    store.put("a", 1)
    store.put("b", 2)
    kv = service(read=store.read)
    lead(kv, "ra", "kv.get", {"key": "a"})
    lead(kv, "rb", "kv.get", {"key": "b"})
    first = kv.take_read_round()
    assert first == (1).to_bytes(8, "big")
    assert kv.take_read_round() is None  # nothing new queued
    lead(kv, "rc", "kv.get", {"key": "c"})
    second = kv.take_read_round()
    assert second == (2).to_bytes(8, "big")
    kv.serve_reads(100)  # not confirmed yet
    assert kv.take_replies() == []
    kv.read_confirmed(second, index=7)
    kv.read_confirmed(first, index=9)
    kv.read_confirmed(first, index=9)  # a repeated confirmation changes nothing
    kv.read_confirmed(b"unknown", index=1)
    kv.serve_reads(6)
    assert kv.take_replies() == []
    store.put("c", 3)
    kv.serve_reads(7)
    assert kv.take_replies() == [("rc", "kv.ok", {"value": 3})]
    store.put("a", 10)  # applied before the read index is reached: the read sees it
    kv.serve_reads(9)
    kv.serve_reads(9)
    assert kv.take_replies() == [("ra", "kv.ok", {"value": 10}), ("rb", "kv.ok", {"value": 2})]


def test_a_refused_read_round_redirects_its_reads():
    kv = service(read=lambda key: key)
    lead(kv, "r1", "kv.get", {"key": "a"})
    lead(kv, "r2", "kv.get", {"key": "b"})
    context = kv.take_read_round()
    kv.read_round_refused(context, "n2")
    assert kv.take_replies() == [
        ("r1", "kv.redirect", {"leader": "n2"}),
        ("r2", "kv.redirect", {"leader": "n2"}),
    ]
    kv.read_confirmed(context, 1)
    kv.serve_reads(1)
    assert kv.take_replies() == []
    lead(kv, "r3", "kv.get", {"key": "c"})
    assert kv.take_read_round() == (2).to_bytes(8, "big")  # a refused round still counts


def test_replies_accumulate_in_order_until_taken():
    kv = service(read=lambda key: key)
    lead(kv, "bad", "kv.nope", {})
    lead(kv, "w", *put(1))
    kv.proposed(kv.take_proposal(0), first_index=1, term=1, now=0.0)
    kv.request("x", *put(2), leader=False, leader_hint="n2")
    kv.committed(1, 1, [ok_result()])
    replies = kv.take_replies()
    assert [route for route, _, _ in replies] == ["bad", "x", "w"]
    assert kv.take_replies() == []


# ----- lock waits -----------------------------------------------------------------------------


class Waits:
    """A lock table's views for the service, at a settable leader clock."""

    def __init__(self):
        self.views = {}
        self.now_ms = 1000

    def __call__(self, name, owner):
        return self.views.get((name, owner), LockView(None, 0, False)), self.now_ms


def waiting_service():
    waits = Waits()
    kv = KeyValueService(
        node_id="n1",
        request_timeout_s=TIMEOUT_S,
        read=None,
        max_message_bytes=16 << 20,
        lock_view=waits,
    )
    return kv, waits


def lock_wait(kv, route, owner="bob", leader=True):
    kv.request(
        route, "kv.lock_wait", {"name": "a", "owner": owner}, leader=leader, leader_hint="n2"
    )


def test_a_lock_wait_is_answered_at_once_when_granted_or_not_waiting_and_redirected_by_followers():
    kv, waits = waiting_service()
    waits.views[("a", "bob")] = LockView(7, 1300, False)
    lock_wait(kv, "granted")
    lock_wait(kv, "stranger", owner="eve")
    lock_wait(kv, "follower", leader=False)
    assert kv.take_replies() == [
        ("granted", "kv.ok", {"value": {"token": 7, "remaining_ms": 300}}),
        ("stranger", "kv.ok", {"value": LOCK_NOT_WAITING}),
        ("follower", "kv.redirect", {"leader": "n2"}),
    ]
    assert kv.take_proposal(0) is None  # a wait is never a write


def test_a_parked_lock_wait_is_answered_by_the_grant_or_by_the_end_of_the_wait():
    kv, waits = waiting_service()
    waits.views[("a", "bob")] = waits.views[("a", "carol")] = LockView(None, 0, True)
    lock_wait(kv, "bob's")
    lock_wait(kv, "carol's", owner="carol")
    assert kv.take_replies() == []
    kv.locks_changed(
        [LockChange("a", "bob", 8, 2500), LockChange("a", "carol", None, 0)], now_ms=2000
    )
    assert kv.take_replies() == [
        ("bob's", "kv.ok", {"value": {"token": 8, "remaining_ms": 500}}),
        ("carol's", "kv.ok", {"value": LOCK_NOT_WAITING}),
    ]
    kv.locks_changed([LockChange("a", "bob", 9, 2500)], now_ms=2000)  # no one parked: nothing
    assert kv.take_replies() == []


def test_a_parked_lock_wait_is_told_still_queued_after_one_to_two_expiry_rounds():
    kv, waits = waiting_service()
    waits.views[("a", "bob")] = LockView(None, 0, True)
    lock_wait(kv, "first")
    kv.expire(0.0)
    assert kv.take_replies() == []
    lock_wait(kv, "again")  # a re-ask replaces the earlier wait, which is never answered
    kv.expire(0.1)
    assert kv.take_replies() == []
    kv.expire(0.2)
    assert kv.take_replies() == [("again", "kv.ok", {"value": LOCK_STILL_QUEUED})]


def test_losing_leadership_answers_parked_lock_waits_with_retry():
    kv, waits = waiting_service()
    waits.views[("a", "bob")] = LockView(None, 0, True)
    lock_wait(kv, "parked")
    kv.fail_pending("leadership lost")
    assert kv.take_replies() == [("parked", "kv.error", retry_error("leadership lost"))]
    kv.locks_changed([LockChange("a", "bob", 8, 2500)], now_ms=2000)
    assert kv.take_replies() == []
