"""Learners (replicated, never vote or count); witnesses (vote and count, never lead/apply)."""

from caddy.raft.membership import MemberRole
from caddy.raft.messages import RequestVote, TimeoutNow
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


def test_witness_never_campaigns_nor_leads():
    cluster = Cluster(("a", "b"), witnesses=("w",))
    witness = cluster.nodes["w"]
    witness.campaign()
    cluster.tick(200, only=["w"])
    assert witness.state is StateRole.FOLLOWER and witness.term == 0
    witness.step(TimeoutNow(0, "a"))
    assert witness.state is StateRole.FOLLOWER


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
