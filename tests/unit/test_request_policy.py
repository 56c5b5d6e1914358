"""The clients' request policy: whom to ask, what answers mean, when to give up."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caddy.errors import NoQuorum, Timeout, Unavailable, ValueTooLarge
from caddy.replication.commands import CommandError, encode_kv
from caddy.replication.replies import no_quorum_body, too_large_body
from caddy.request_policy import (
    _WRITE_FRAMING_BYTES,
    ATTEMPT_TIMEOUT_S,
    NO_LEADER_BACKOFF_S,
    RequestFailed,
    RequestPolicy,
    SessionExpired,
    _packed_bound,
    answer_body,
    check_size,
    leader_of,
)
from caddy.sizes import MIN_MESSAGE_BYTES
from caddy.wire import Envelope

NODES = ("n1", "n2", "n3")


def answer(kind, **body):
    return Envelope("test", "n", kind, body, 1)


def policy(target=None, deadline=10.0):
    return RequestPolicy(NODES, target, deadline, timeout=deadline)


def test_a_known_leader_is_asked_alone_and_its_answer_settles_the_request():
    course = policy("n2")
    assert course.attempt(0.0) == (["n2"], ATTEMPT_TIMEOUT_S)
    assert course.settle(["n2"], {"n2": answer("kv.ok", value=7)})
    assert (course.served_by, course.value) == ("n2", 7)


def test_a_silent_leader_makes_the_next_attempt_ask_everyone_at_once():
    course = policy("n2")
    assert not course.settle(["n2"], {"n2": None})
    assert course.backoff == 0.0
    assert course.attempt(1.0) == (list(NODES), ATTEMPT_TIMEOUT_S)


def test_a_redirect_naming_one_other_node_is_followed_without_pause():
    course = policy("n1")
    assert not course.settle(["n1"], {"n1": answer("kv.redirect", leader="n3")})
    assert course.target == "n3" and course.backoff == 0.0
    assert course.attempt(0.1)[0] == ["n3"]


def test_no_leader_known_anywhere_means_a_short_pause_then_everyone_again():
    course = policy("n1")
    assert not course.settle(
        ["n1"], {"n1": answer("kv.error", error="leadership lost", retry=True)}
    )
    assert course.target is None and course.backoff == NO_LEADER_BACKOFF_S
    assert course.attempt(0.5)[0] == list(NODES)


def test_an_answer_no_retry_can_change_fails_the_request():
    course = policy("n1")
    with pytest.raises(RequestFailed, match="bad key"):
        course.settle(["n1"], {"n1": answer("kv.error", error="bad key", retry=False)})


def test_session_expired_says_whether_the_write_had_been_sent_before():
    expired = answer("kv.error", error="session_expired: x", code="session_expired", retry=False)
    first = policy("n1")
    first.attempt(0.0)
    with pytest.raises(SessionExpired) as raised:
        first.settle(["n1"], {"n1": expired})
    assert raised.value.retried is False
    again = policy("n1")
    again.attempt(0.0)
    assert not again.settle(["n1"], {"n1": None})  # silence: maybe applied, maybe not
    again.attempt(0.3)
    with pytest.raises(SessionExpired, match="outcome is unknown") as raised:
        again.settle(list(NODES), {"n1": expired, "n2": None, "n3": None})
    assert raised.value.retried is True


def test_a_write_the_leader_finds_too_large_raises_value_too_large_with_both_sizes():
    refused = too_large_body(ValueTooLarge("the write", 20_000, 12_288, 16_384))
    with pytest.raises(ValueTooLarge) as raised:
        policy("n1").settle(["n1"], {"n1": answer("kv.error", **refused)})
    assert (raised.value.size, raised.value.limit, raised.value.max_message_bytes) == (
        20_000,
        12_288,
        16_384,
    )
    garbled = {**refused, "size": "many"}  # not what a node sends: still a definite failure
    with pytest.raises(RequestFailed, match="20000 bytes, over the largest"):
        policy("n1").settle(["n1"], {"n1": answer("kv.error", **garbled)})


@pytest.mark.parametrize(
    "kind, body",
    [
        ("kv.put", {"key": "k", "value": "x" * 12_300}),
        ("kv.put", {"key": "k" * 12_300, "value": None}),
        ("kv.cas", {"key": "k", "expected": "e" * 6_150, "new": "n" * 6_150}),
        ("kv.delete", {"key": "k" * 12_300}),
        ("kv.get", {"key": "\N{GRINNING FACE}" * 3_073}),  # 12,292 bytes of UTF-8
    ],
)
def test_the_client_refuses_a_request_over_the_largest_size_before_sending(kind, body):
    with pytest.raises(ValueTooLarge, match="over the largest of 12288 bytes"):
        check_size(kind, body, MIN_MESSAGE_BYTES)


def test_the_client_leaves_a_request_it_cannot_encode_to_the_node():
    check_size("kv.put", {"key": "k", "value": object()}, MIN_MESSAGE_BYTES)  # no ValueTooLarge
    check_size("kv.get", {"key": "\ud800" * 20_000}, MIN_MESSAGE_BYTES)  # not UTF-8


def test_the_deadline_ends_the_course_with_the_right_error():
    silent = policy("n1", deadline=1.0)
    assert silent.attempt(0.9) == (["n1"], pytest.approx(0.1))
    silent.settle(["n1"], {"n1": None})
    assert silent.attempt(1.0) is None
    assert isinstance(silent.failure(), Unavailable)
    heard = policy("n1", deadline=1.0)
    heard.settle(["n1"], {"n1": answer("kv.redirect", leader=None)})
    assert heard.attempt(1.5) is None
    assert isinstance(heard.failure(), Timeout)


def test_no_quorum_sends_the_next_attempt_to_everyone_and_is_the_error_at_the_deadline():
    course = policy("n3", deadline=1.0)
    assert not course.settle(["n3"], {"n3": answer("kv.error", **no_quorum_body())})
    assert course.target is None and course.backoff == NO_LEADER_BACKOFF_S
    assert course.attempt(0.5) == (list(NODES), pytest.approx(ATTEMPT_TIMEOUT_S))
    course.settle(
        list(NODES), {"n1": None, "n2": None, "n3": answer("kv.error", **no_quorum_body())}
    )
    assert course.attempt(1.0) is None
    failure = course.failure()
    assert isinstance(failure, NoQuorum) and isinstance(failure, Unavailable)
    healed = policy("n3", deadline=1.0)  # a later answer that is not no_quorum: a plain Timeout
    healed.settle(["n3"], {"n3": answer("kv.error", **no_quorum_body())})
    healed.settle(list(NODES), {"n1": answer("kv.redirect", leader=None)})
    assert isinstance(healed.failure(), Timeout) and not isinstance(healed.failure(), NoQuorum)


def test_the_leader_is_the_one_of_the_highest_term_any_node_reports():
    statuses = {
        "n1": {"state": "leader", "term": 3},  # a deposed leader that has not heard yet
        "n2": {"state": "leader", "term": 4},
        "n3": None,
    }
    assert leader_of(statuses) == "n2"
    assert leader_of({"n1": {"state": "follower", "term": 4}, "n2": None}) is None


def test_a_refused_client_request_raises_and_an_answer_gives_its_body():
    assert answer_body(answer("client.status.ok", term=2)) == {"term": 2}
    with pytest.raises(RequestFailed, match="unknown-request"):
        answer_body(answer("client.error", error="unknown-request"))


@settings(max_examples=300)
@given(
    op=st.sampled_from(["put", "cas", "delete"]),
    key=st.text(max_size=50),
    value=st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=200)
    | st.binary(max_size=300),
    expected=st.none() | st.text(max_size=20) | st.binary(max_size=20),
)
def test_the_clients_quick_bound_on_a_writes_size_never_falls_short(op, key, value, expected):
    """`check_size` skips packing a write whose scalars' bound fits: the bound must hold."""
    try:
        payload = encode_kv(op, key, value, expected if op == "cas" else None)
    except CommandError:
        return  # left to the node
    bound = sum(_packed_bound(v) for v in (key, value, expected if op == "cas" else None))
    assert len(payload) <= bound + _WRITE_FRAMING_BYTES
