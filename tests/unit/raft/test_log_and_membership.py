"""RaftLog bookkeeping and membership arithmetic."""

import msgpack
import pytest

from caddy.errors import WireError
from caddy.raft.errors import RequestRejected
from caddy.raft.log import RaftLog
from caddy.raft.membership import (
    ChangeKind,
    MemberRole,
    apply_change,
    decode_membership,
    encode_membership,
    quorum_index,
    quorum_size,
    role_of,
    voting_members,
)
from caddy.raft.types import Entry, Membership, SnapshotMeta


def make_log(terms, snapshot=None):
    snapshot = snapshot or SnapshotMeta()
    first = snapshot.index + 1
    return RaftLog(snapshot, [Entry(i, t) for i, t in enumerate(terms, first)], 0)


def test_term_lookups_respect_the_snapshot_base():
    log = make_log([3, 3, 4], SnapshotMeta(10, 2))
    assert (log.first_index(), log.last_index(), log.last_term()) == (11, 13, 4)
    assert [log.term_at(i) for i in (9, 10, 11, 13, 14)] == [None, 2, 3, 4, None]
    assert log.last_index_of_term(3) == 12 and log.last_index_of_term(5) is None
    assert log.first_index_of_term(4) == 13 and log.first_index_of_term(3) == 11


def test_up_to_date_compares_last_term_then_length():
    log = make_log([1, 2, 2])
    assert log.is_up_to_date(1, 3)
    assert log.is_up_to_date(3, 2) and not log.is_up_to_date(2, 2)
    assert not log.is_up_to_date(10, 1)


def test_merge_keeps_matching_entries_and_truncates_on_conflict():
    log = make_log([1, 1, 1, 1])
    log.stable_index = 4
    assert log.merge(1, [Entry(2, 1), Entry(3, 1)]) is None
    assert log.last_index() == 4
    assert log.merge(2, [Entry(3, 2), Entry(4, 2), Entry(5, 2)]) == 3
    assert [e.term for e in log.entries] == [1, 1, 2, 2, 2]
    assert log.stable_index == 2
    assert [e.index for e in log.unstable_entries()] == [3, 4, 5]


def test_stable_to_ignores_entries_that_were_replaced():
    log = make_log([1, 1])
    log.stable_index = 0
    log.merge(1, [Entry(2, 3)])
    log.stable_to(2, 1)
    assert log.stable_index == 0
    log.stable_to(2, 3)
    assert log.stable_index == 2


def test_slice_limits_count_and_bytes_but_returns_one_entry_at_least():
    log = RaftLog(SnapshotMeta(), [Entry(i, 1, data=b"x" * 10) for i in range(1, 9)], 0)
    assert len(log.slice(1, 3, 1000)) == 3
    assert len(log.slice(1, 100, 25)) == 2
    assert len(log.slice(1, 100, 5)) == 1


def test_compact_and_restore():
    log = make_log([1, 1, 2, 2])
    log.applied = 3
    log.compact(SnapshotMeta(3, 2))
    assert log.first_index() == 4 and log.term_at(3) == 2 and log.last_index() == 4
    log.restore(SnapshotMeta(9, 5), b"s")
    assert log.last_index() == 9 and log.commit == 9 and log.pending_snapshot[1] == b"s"


def test_quorum_counts_voters_and_witnesses_not_learners():
    membership = Membership(frozenset({"a", "b"}), frozenset({"l1", "l2"}), frozenset({"w"}))
    assert voting_members(membership) == {"a", "b", "w"}
    assert quorum_size(3) == 2 and quorum_size(4) == 3 and quorum_size(5) == 3
    assert quorum_index([9, 5, 7]) == 7
    assert quorum_index([9, 5, 7, 1]) == 5
    assert role_of(membership, "w") is MemberRole.WITNESS
    assert role_of(membership, "l1") is MemberRole.LEARNER
    assert role_of(membership, "zz") is MemberRole.NONE


def test_single_changes_and_their_refusals():
    m = Membership(frozenset({"a"}))
    m = apply_change(m, ChangeKind.ADD_LEARNER, "b")
    m = apply_change(m, ChangeKind.PROMOTE_LEARNER, "b")
    m = apply_change(m, ChangeKind.ADD_WITNESS, "w")
    assert m == Membership(frozenset({"a", "b"}), frozenset(), frozenset({"w"}))
    m = apply_change(m, ChangeKind.DEMOTE_VOTER, "a")
    assert (m.voters, m.learners) == ({"b"}, {"a"})
    m = apply_change(m, ChangeKind.REMOVE_NODE, "a")
    assert m.voters == {"b"}
    for kind, node in [
        (ChangeKind.DEMOTE_VOTER, "b"),  # the last voter
        (ChangeKind.DEMOTE_VOTER, "w"),
        (ChangeKind.ADD_VOTER, "b"),
        (ChangeKind.PROMOTE_LEARNER, "w"),
        (ChangeKind.REMOVE_NODE, "nobody"),
        (ChangeKind.REMOVE_NODE, "b"),  # the last voter
    ]:
        with pytest.raises(RequestRejected):
            apply_change(m, kind, node)


def test_membership_payload_round_trips_and_rejects_garbage():
    m = Membership(frozenset({"a", "b"}), frozenset({"c"}), frozenset({"w"}))
    assert decode_membership(encode_membership(m)) == m
    for garbage in (b"", b"\xc1", b"\x90"):
        with pytest.raises(WireError):
            decode_membership(garbage)


def test_addresses_survive_the_wire_and_are_not_part_of_equality():
    with_address = Membership(
        frozenset({"a", "b"}), frozenset({"d"}), addresses=(("d", "tcp://h:1"),)
    )
    decoded = decode_membership(encode_membership(with_address))
    assert decoded.addresses == (("d", "tcp://h:1"),)
    assert decoded == Membership(frozenset({"a", "b"}), frozenset({"d"}))
    plain = encode_membership(Membership(frozenset({"a"})))
    assert b"addresses" not in plain  # the entry format of clusters without added nodes


@pytest.mark.parametrize(
    "addresses",
    [
        [],
        {"x": "tcp://h:1"},  # not a member
        {"d": 7},
        {"d": ""},
        {"d": "tcp://" + "h" * 300},
    ],
)
def test_a_membership_with_bad_addresses_is_a_wire_error(addresses):
    body = {"voters": ["a"], "learners": ["d"], "witnesses": [], "addresses": addresses}
    with pytest.raises(WireError, match="addresses"):
        decode_membership(msgpack.packb(body))
