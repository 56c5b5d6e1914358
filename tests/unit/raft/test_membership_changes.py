"""Membership changes: one at a time, in force once appended, safe across leader changes."""

import pytest

from caddy.raft.errors import RequestRejected
from caddy.raft.membership import ChangeKind, MemberRole
from caddy.raft.ready import StateRole
from caddy.raft.types import EntryKind
from tests.unit.raft.cluster import Cluster


def change(cluster, leader_id, kind, node_id):
    index, _ = cluster.nodes[leader_id].change_membership(kind, node_id)
    cluster.process(leader_id)
    cluster.deliver()
    return index


def test_add_a_learner_then_promote_it():
    cluster = Cluster(spares=("d",))
    cluster.elect("a")
    cluster.propose("a", b"before")
    change(cluster, "a", ChangeKind.ADD_LEARNER, "d")
    cluster.tick(3)
    assert cluster.commands("d") == [b"before"]
    assert cluster.nodes["d"].member_role is MemberRole.LEARNER
    change(cluster, "a", ChangeKind.PROMOTE_LEARNER, "d")
    cluster.tick(2)
    for node in cluster.nodes.values():
        assert node.membership.voters == {"a", "b", "c", "d"}
    cluster.isolate("a")
    cluster.crash("b")
    cluster.tick(60, only=["c", "d"])  # c and d are only 2 of 4 voters: no leader
    assert not [n for n in ("c", "d") if cluster.nodes[n].state is StateRole.LEADER]


def test_a_change_is_in_force_on_append_before_commit():
    cluster = Cluster(spares=("d",))
    leader = cluster.elect("a")
    cluster.isolate("b")
    cluster.isolate("c")
    leader.change_membership(ChangeKind.ADD_VOTER, "d")
    assert leader.membership.voters == {"a", "b", "c", "d"}
    assert leader.progress_of("d") is not None


def test_one_change_at_a_time():
    cluster = Cluster(spares=("d", "e"))
    leader = cluster.elect("a")
    cluster.isolate("b")
    cluster.isolate("c")
    leader.change_membership(ChangeKind.ADD_LEARNER, "d")
    with pytest.raises(RequestRejected, match="in progress"):
        leader.change_membership(ChangeKind.ADD_LEARNER, "e")
    cluster.heal()
    cluster.tick(2)
    change(cluster, "a", ChangeKind.ADD_LEARNER, "e")
    assert cluster.nodes["a"].membership.learners == {"d", "e"}


def test_no_change_before_the_leader_commits_in_its_term():
    cluster = Cluster(spares=("d",))
    leader = cluster.elect_without_replication("a")
    assert leader.state is StateRole.LEADER
    with pytest.raises(RequestRejected, match="committed"):
        leader.change_membership(ChangeKind.ADD_VOTER, "d")


def test_remove_a_follower():
    cluster = Cluster(("a", "b", "c", "d"))
    cluster.elect("a")
    change(cluster, "a", ChangeKind.REMOVE_NODE, "d")
    cluster.crash("d")
    cluster.crash("c")
    cluster.propose("a", b"x")  # a and b are a majority of three
    assert cluster.commands("a") == [b"x"]


def test_removing_the_leader_makes_it_step_down_once_committed():
    cluster = Cluster()
    leader = cluster.elect("a")
    change(cluster, "a", ChangeKind.REMOVE_NODE, "a")
    cluster.tick(30, only=["a", "b", "c"])
    assert leader.state is StateRole.FOLLOWER
    assert leader.member_role is MemberRole.NONE
    new_leaders = cluster.leaders()
    assert len(new_leaders) == 1 and new_leaders[0] in ("b", "c")
    cluster.propose(new_leaders[0], b"after")
    assert cluster.commands("b")[-1:] == [b"after"]
    cluster.tick(100)
    assert leader.state is StateRole.FOLLOWER  # a removed node never campaigns


def test_a_config_entry_that_is_truncated_away_is_undone():
    cluster = Cluster(("a", "b", "c"), spares=("d",), pre_vote=False, check_quorum=False)
    old = cluster.elect("a")
    cluster.isolate("a")
    old.change_membership(ChangeKind.ADD_VOTER, "d")  # stays in a's log only
    assert old.membership.voters == {"a", "b", "c", "d"}
    cluster.heal()
    cluster.cut = {("a", "b"), ("a", "c"), ("a", "d")}
    cluster.elect("b")
    cluster.propose("b", b"y")
    cluster.heal()
    cluster.tick(3)
    assert old.membership.voters == {"a", "b", "c"}
    assert not [e for e in old.log.entries if e.kind is EntryKind.CONFIG]


def test_a_new_leader_finishes_a_change_it_inherited():
    cluster = Cluster(("a", "b", "c"), spares=("d",))
    old = cluster.elect("a")
    cluster.cut = {("a", "c")}
    old.change_membership(ChangeKind.ADD_LEARNER, "d")
    cluster.process("a")
    cluster.outbox = [item for item in cluster.outbox if item[1] == "b"]
    cluster.deliver()  # b has the change, uncommitted
    cluster.crash("a")
    cluster.heal()
    cluster.tick(40, only=["b", "c", "d"])
    leader = cluster.leaders()[0]
    assert leader == "b"  # c's log is behind
    assert cluster.nodes["b"].membership.learners == {"d"}
    cluster.propose("b", b"z")
    assert cluster.commands("d") == [b"z"]


def test_an_added_nodes_address_travels_with_the_membership():
    """Every node learns where a node added at run time listens (`Membership.addresses`), from
    the CONFIG entry; a promotion keeps it and a removal forgets it."""
    cluster = Cluster(spares=("d",))
    cluster.elect("a")
    index, _ = cluster.nodes["a"].change_membership(
        ChangeKind.ADD_LEARNER, "d", "tcp://10.0.0.4:7104"
    )
    cluster.process("a")
    cluster.deliver()
    cluster.tick(3)
    for node in ("a", "b", "c", "d"):
        assert cluster.nodes[node].membership.addresses == (("d", "tcp://10.0.0.4:7104"),)
    change(cluster, "a", ChangeKind.PROMOTE_LEARNER, "d")
    cluster.tick(2)
    assert cluster.nodes["b"].membership.addresses == (("d", "tcp://10.0.0.4:7104"),)
    change(cluster, "a", ChangeKind.REMOVE_NODE, "d")
    cluster.tick(2)
    assert cluster.nodes["b"].membership.addresses == ()


def test_a_removed_node_that_missed_its_removal_is_told_and_stops_campaigning():
    """Cut off while the leader removes it, d would never hear of it (nobody sends a non-member
    the log) and would ask for votes for good; the leader sends it the log until it was told a
    commit that covers its removal, then forgets it."""
    cluster = Cluster(("a", "b", "c", "d"))
    leader = cluster.elect("a")
    cluster.isolate("d")
    removal = change(cluster, "a", ChangeKind.REMOVE_NODE, "d")
    cluster.tick(3, only=["a", "b", "c"])
    assert leader.commit_index >= removal
    assert "d" in leader.follower_progress()  # still sent to, d has not been told
    cluster.heal()
    cluster.tick(5)
    removed = cluster.nodes["d"]
    assert removed.member_role is MemberRole.NONE
    assert removed.commit_index >= removal
    assert "d" not in leader.follower_progress()
    for _ in range(100):
        cluster.tick(1)
        assert removed.state is StateRole.FOLLOWER, "a removed node campaigned"
