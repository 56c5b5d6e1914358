"""Client requests of the KV service: validation, the log command they become, and replies."""

import pytest

from caddy.replication.commands import decode_batch, decode_kv
from caddy.replication.locks import ACQUIRE, FENCE, RELEASE, RENEW, decode_lock
from caddy.replication.requests import RequestError, parse_request, result_reply, writes_entry
from caddy.replication.state_machine import ErrorCode, error_result, ok_result

SESSION = {"client": "c1", "seq": 3, "ack": 2}


def test_a_put_becomes_a_session_command_stamped_with_the_log_time():
    request = parse_request("kv.put", {"key": "k", "value": [1, "x"], **SESSION})
    assert not request.is_read
    log_time_ms, (command,) = decode_batch(writes_entry([request], log_time_ms=1234))
    assert log_time_ms == 1234
    assert (command.client_id, command.seq, command.ack_below, command.log_time_ms) == (
        "c1",
        3,
        2,
        1234,
    )
    kv = decode_kv(command.payload)
    assert (kv.op.value, kv.key, kv.value) == ("put", "k", [1, "x"])


def test_cas_carries_expected_and_new_and_delete_only_the_key():
    cas = decode_kv(
        parse_request("kv.cas", {"key": "k", "expected": None, "new": True, **SESSION}).payload
    )
    assert (cas.op.value, cas.expected, cas.value) == ("cas", None, True)
    delete = decode_kv(parse_request("kv.delete", {"key": "k", **SESSION}).payload)
    assert (delete.op.value, delete.key) == ("delete", "k")


def test_lock_requests_become_lock_commands_in_the_session():
    lock = parse_request(
        "kv.lock", {"name": "a", "owner": "o", "ttl_ms": 1000, "wait_ms": 50, **SESSION}
    )
    assert (lock.op, lock.key, lock.client_id, lock.seq) == ("lock", "a", "c1", 3)
    assert decode_lock(lock.payload) == (ACQUIRE, "a", "o", 1000, 50)
    renew = parse_request("kv.renew", {"name": "a", "owner": "o", "token": 9, **SESSION})
    assert decode_lock(renew.payload) == (RENEW, "a", "o", 9, 0)
    unlock = parse_request("kv.unlock", {"name": "a", "owner": "o", **SESSION})
    assert decode_lock(unlock.payload) == (RELEASE, "a", "o", 0, 0)
    wait = parse_request("kv.lock_wait", {"name": "a", "owner": "o"})
    assert (wait.op, wait.key, wait.owner, wait.payload) == ("lock_wait", "a", "o", b"")


def test_a_fenced_write_wraps_the_key_value_payload_with_the_lock_and_token():
    request = parse_request("kv.put", {"key": "k", "value": 1, "fence": ["a", 4], **SESSION})
    op, name, _, token, inner = decode_lock(request.payload)
    assert (op, name, token, decode_kv(inner).key) == (FENCE, "a", 4, "k")
    with pytest.raises(RequestError, match="a fence is"):
        parse_request("kv.put", {"key": "k", "value": 1, "fence": "a", **SESSION})
    with pytest.raises(RequestError, match="token"):
        parse_request("kv.put", {"key": "k", "value": 1, "fence": ["a", 0], **SESSION})


def test_a_get_is_a_read_without_a_session():
    request = parse_request("kv.get", {"key": "k"})
    assert request.is_read and request.key == "k"


@pytest.mark.parametrize(
    "kind, body, message",
    [
        ("kv.frobnicate", {"key": "k"}, "unknown request"),
        ("kv.get", {}, "missing field 'key'"),
        ("kv.get", {"key": 7}, "field 'key' must be str"),
        ("kv.put", {"key": "k", "value": 1}, "missing field 'client'"),
        ("kv.put", {"key": "k", "value": 1, **SESSION, "seq": "3"}, "field 'seq' must be int"),
        ("kv.put", {"key": "k", "value": 1, **SESSION, "seq": True}, "got bool"),
        ("kv.put", {"key": "k", "value": 1, **SESSION, "seq": 0}, "seq >= 1"),
        ("kv.put", {"key": "k", "value": 1, **SESSION, "ack": 4}, "ack <= seq"),
        ("kv.put", {"key": "k", "value": 1, **SESSION, "client": ""}, "client id"),
        ("kv.cas", {"key": "k", "new": 1, **SESSION}, "missing field 'expected'"),
    ],
)
def test_malformed_requests_are_refused_with_a_reason(kind, body, message):
    with pytest.raises(RequestError, match=message):
        parse_request(kind, body)


def test_replies_follow_the_result_shape():
    assert result_reply(ok_result(5)) == ("kv.ok", {"value": 5})
    assert result_reply(ok_result({"ok": False})) == ("kv.ok", {"value": {"ok": False}})
    kind, body = result_reply(error_result(ErrorCode.STALE, "seq below the window"))
    assert kind == "kv.error" and body["retry"] is False and body["error"].startswith("stale")
