"""Learners (replicated, never vote or count); witnesses (vote and count, never apply, and
lead only to hand leadership to a data voter they brought up to date)."""

import pytest

from caddy.errors import NotLeader
from caddy.raft.membership import ChangeKind, MemberRole
from caddy.raft.messages import InstallSnapshot, RequestVote, TimeoutNow
from caddy.raft.ready import StateRole
from tests.unit.raft.cluster import Cluster


def test_learner_receives_and_applies_the_log():
    cluster = Cluster(("a", "b", "c"), learners=("l",))
    cluster.elect("a")
    cluster.propose("a", b"x", b"y")
    assert cluster.commands("l") == [b"x", b"y"]
    assert cluster.nodes["l"].member_role is MemberRole.LEARNER


def test_learner_is_never_asked_to_vote_and_never_campaigns():
    cluster = Cluster(("a", "b", "c"), learners=("l",))
    cluster.nodes["a"].campaign()
    requests = [to for to, m in cluster.nodes["a"].ready().messages if isinstance(m, RequestVote)]
    assert sorted(requests) == ["b", "c"]
    learner = cluster.nodes["l"]
    cluster.tick(200, only=["l"])
    assert learner.state is StateRole.FOLLOWER and learner.term == 0
    learner.step(TimeoutNow(0, "a"))
    assert learner.state is StateRole.FOLLOWER


def test_learner_does_not_count_for_commit():
    cluster = Cluster(("a", "b", "c"), learners=("l1", "l2", "l3"))
    cluster.elect("a")
    cluster.cut = {("a", "b"), ("a", "c")}
    cluster.propose("a", b"x")
    assert cluster.nodes["l1"].last_index == cluster.nodes["a"].last_index
    assert cluster.commands("a") == []
    cluster.heal()
    cluster.tick(2)
    assert cluster.commands("a") == [b"x"]


def test_witness_votes_and_counts_for_quorum():
    cluster = Cluster(("a", "b"), witnesses=("w",))
    cluster.crash("b")
    leader = cluster.elect("a")
    cluster.propose("a", b"x")
    assert cluster.commands("a") == [b"x"]
    assert any(r.granted for r in cluster.nodes["w"].vote_audit)
    assert leader.commit_index == cluster.nodes["w"].last_index


def test_a_witness_waits_longer_than_any_data_voter_so_a_data_voter_wins_when_it_can():
    for seed in range(20):
        cluster = Cluster(("a", "b"), witnesses=("w",), seed=seed)
        cluster.tick(45)  # every node's timer runs; the witness's is a whole timeout longer
        assert cluster.leaders() in (["a"], ["b"]), seed
        assert cluster.nodes["w"].state is StateRole.FOLLOWER


def test_a_witness_takes_no_transfer():
    cluster = Cluster(("a", "b"), witnesses=("w",))
    witness = cluster.nodes["w"]
    witness.step(TimeoutNow(0, "a"))
    assert witness.state is StateRole.FOLLOWER and witness.term == 0


def lagging_voter_cluster(**settings):
    """a leads; b misses the last writes (a and w commit them); then a dies."""
    cluster = Cluster(("a", "b"), witnesses=("w",), **settings)
    cluster.elect("a")
    cluster.propose("a", b"early")
    cluster.cut = {("a", "b"), ("b", "a")}
    cluster.propose("a", b"x", b"y")
    assert cluster.nodes["a"].commit_index == cluster.nodes["w"].last_index
    assert cluster.nodes["b"].last_index < cluster.nodes["w"].last_index
    cluster.crash("a")
    cluster.heal()
    return cluster


def test_with_the_leader_dead_and_the_voter_behind_the_witness_leads_only_to_hand_over():
    cluster = lagging_voter_cluster()
    witness, voter = cluster.nodes["w"], cluster.nodes["b"]
    for _ in range(80):
        cluster.tick()
        if voter.state is StateRole.LEADER:
            break
    assert voter.state is StateRole.LEADER and witness.state is StateRole.FOLLOWER
    refused = [r for r in witness.vote_audit if r.candidate == "b" and not r.granted]
    assert refused and refused[0].reason == "candidate log is behind ours"
    [witness_term] = [r.term for r in voter.vote_audit if r.candidate == "w" and not r.pre_vote]
    assert voter.term > witness_term  # the witness led a term, then b won the next
    entries = [e for e in voter.log.entries if e.term == witness_term]
    assert [e.kind.name for e in entries] == ["NOOP"]  # the witness's term served nobody
    assert cluster.commands("b") == [b"early", b"x", b"y"]  # nothing committed was lost
    cluster.propose("b", b"z")
    assert cluster.commands("b")[-1] == b"z"


def test_a_witness_leader_serves_no_write_and_no_read():
    cluster = lagging_voter_cluster()
    witness = cluster.nodes["w"]
    cluster.drop = lambda sender, to, message: isinstance(message, TimeoutNow)  # no hand-over
    for _ in range(80):
        cluster.tick()
        if witness.state is StateRole.LEADER:
            break
    assert witness.state is StateRole.LEADER
    with pytest.raises(NotLeader):
        witness.propose(b"client write")
    with pytest.raises(NotLeader):
        witness.propose_many([b"client write"])
    with pytest.raises(NotLeader):
        witness.read_index(b"read")
    with pytest.raises(NotLeader):
        witness.change_membership(ChangeKind.REMOVE_NODE, "a")


def test_a_witness_leader_sends_no_snapshot_to_a_voter_that_needs_one():
    cluster = lagging_voter_cluster(snapshot_threshold=2)
    witness = cluster.nodes["w"]
    cluster.storage["w"].save_snapshot(witness.compact(witness.applied_index, b""), b"")
    assert witness.log.snapshot.index > cluster.nodes["b"].last_index  # b needs a snapshot
    sent = []
    real_drop = cluster.drop
    cluster.drop = lambda sender, to, message: sent.append((sender, type(message))) and False
    cluster.tick(120)
    cluster.drop = real_drop
    assert ("w", InstallSnapshot) not in sent
    assert cluster.nodes["b"].state is not StateRole.LEADER  # it waits for a data leader
    cluster.start("a")  # the dead data voter returns: the witness hands over to it
    for _ in range(120):
        cluster.tick()
        if cluster.leaders() and cluster.leaders() != ["w"]:
            break
    assert cluster.leaders() == ["a"]
    assert cluster.commands("a")[-2:] == [b"x", b"y"]


def test_witness_is_not_handed_committed_entries_and_trims_its_log():
    cluster = Cluster(("a", "b"), witnesses=("w",), snapshot_threshold=5)
    cluster.elect("a")
    cluster.propose("a", *[b"%d" % i for i in range(12)])
    cluster.tick(2)
    witness = cluster.nodes["w"]
    assert cluster.applied["w"] == []
    assert witness.applied_index == witness.commit_index == cluster.nodes["a"].commit_index
    requests = [r.snapshot_request for r in cluster.readies["w"] if r.snapshot_request]
    assert requests
    meta = witness.compact(requests[-1], b"")
    cluster.storage["w"].save_snapshot(meta, b"")
    assert witness.log.snapshot.index == requests[-1]
    assert len(witness.log.entries) < 13
    # A trimmed witness still votes with its true last index and term.
    cluster.crash("a")
    cluster.tick(40)
    assert cluster.nodes["b"].state is StateRole.LEADER
