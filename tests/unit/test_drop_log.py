"""The rate-limited drop log: one line per (peer, reason) per interval, with the count of the
drops in between, and bounded memory whatever names it is handed."""

import logging

import pytest

from actors.drop_log import MAX_DETAIL_CHARS, DropLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def drops(caplog):
    caplog.set_level(logging.INFO, logger="test.drops")
    clock = Clock()
    return DropLog("n1", logging.getLogger("test.drops"), interval_s=10, clock=clock), clock, caplog


def lines(caplog):
    return [record.getMessage() for record in caplog.records]


def test_the_first_drop_is_logged_and_the_rest_of_the_interval_is_counted(drops):
    log, clock, caplog = drops
    assert log.note("n2", "malformed", "envelope is not a list of 7 fields")
    for _ in range(99):
        assert not log.note("n2", "malformed", "again")
    assert lines(caplog) == [
        "node n1: dropped 1 frame(s) from n2 (malformed): envelope is not a list of 7 fields"
    ]
    clock.now += 10
    assert log.note("n2", "malformed", "later")
    assert lines(caplog)[-1] == (
        "node n1: dropped 1 frame(s) from n2 (malformed): later; 99 more since the last such line"
    )
    clock.now += 10
    assert log.note("n2", "malformed")
    assert lines(caplog)[-1] == "node n1: dropped 1 frame(s) from n2 (malformed)"


def test_each_peer_and_reason_has_its_own_interval(drops):
    log, _, caplog = drops
    assert log.note("n2", "malformed")
    assert log.note("n3", "malformed")
    assert log.note("n2", "raft-body")
    assert log.note(None, "malformed", count=3)  # a client or an unknown sender
    assert not log.note("n2", "malformed")
    assert len(lines(caplog)) == 4
    assert lines(caplog)[-1] == "node n1: dropped 3 frame(s) from - (malformed)"


def test_forged_names_cannot_grow_it_past_its_bound(drops):
    _, clock, caplog = drops
    log = DropLog("n1", logging.getLogger("test.drops"), interval_s=10, max_keys=64, clock=clock)
    for number in range(10_000):
        log.note(f"forged-{number}", "unknown-sender")
    assert len(log) <= 64 + 1  # the overflow line's key
    assert len(lines(caplog)) <= 64 + 1
    clock.now += 10  # all idle: forgotten on the next look, and new names get lines again
    log.note("n2", "malformed")
    assert len(log) <= 2 and lines(caplog)[-1].startswith("node n1: dropped 1 frame(s) from n2")


def test_a_long_detail_is_cut(drops):
    log, _, caplog = drops
    log.note("n2", "malformed", "x" * 10_000)
    assert len(lines(caplog)[0]) < MAX_DETAIL_CHARS + 80


def test_nothing_is_kept_when_the_level_is_off(caplog):
    caplog.set_level(logging.WARNING, logger="test.quiet")
    log = DropLog("n1", logging.getLogger("test.quiet"))
    assert not log.note("n2", "malformed")
    assert len(log) == 0 and not caplog.records
