"""Leadership transfer and ReadIndex / lease reads."""

import pytest

from caddy.errors import NotLeader
from caddy.raft.errors import RequestRejected
from caddy.raft.messages import Heartbeat, TimeoutNow
from caddy.raft.ready import StateRole
from tests.unit.raft.cluster import Cluster


def test_transfer_to_an_up_to_date_follower():
    cluster = Cluster()
    leader = cluster.elect("a")
    cluster.propose("a", b"x")
    leader.transfer_leadership("b")
    cluster.deliver()
    assert cluster.leaders() == ["b"]
    assert cluster.nodes["b"].term == leader.term


def test_transfer_catches_a_lagging_target_up_first():
    cluster = Cluster()
    leader = cluster.elect("a")
    cluster.cut = {("a", "c")}
    cluster.propose("a", b"x", b"y")
    cluster.heal()
    cluster.outbox = []
    leader.transfer_leadership("c")
    cluster.process("a")
    assert not any(isinstance(m, TimeoutNow) for _, _, m in cluster.outbox)
    cluster.deliver()
    assert cluster.leaders() == ["c"]
    assert cluster.commands("c") == [b"x", b"y"]


def test_the_transfer_candidate_is_the_voter_that_matches_furthest():
    cluster = Cluster()
    leader = cluster.elect("a")
    assert cluster.nodes["b"].transfer_candidate() is None  # only a leader chooses
    cluster.cut = {("a", "c")}
    cluster.propose("a", b"x", b"y")
    cluster.deliver()
    assert leader.transfer_candidate() == "b"
    cluster.heal()
    cluster.cut = {("a", "b")}
    cluster.propose("a", b"z")
    cluster.deliver()
    assert leader.transfer_candidate() == "c"


def test_proposals_are_refused_during_a_transfer_and_it_aborts_after_a_timeout():
    cluster = Cluster()
    leader = cluster.elect("a")
    cluster.isolate("c")
    leader.transfer_leadership("c")
    with pytest.raises(NotLeader) as raised:
        leader.propose(b"x")
    assert raised.value.leader_hint == "c"
    cluster.tick(12, only=["a", "b"])
    assert leader.state is StateRole.LEADER and leader.transferee is None
    cluster.propose("a", b"x")
    assert cluster.commands("a") == [b"x"]


def test_transfer_only_to_a_voter_and_only_by_the_leader():
    cluster = Cluster(("a", "b"), learners=("l",), witnesses=("w",))
    leader = cluster.elect("a")
    for target in ("l", "w"):
        with pytest.raises(RequestRejected):
            leader.transfer_leadership(target)
    with pytest.raises(NotLeader):
        cluster.nodes["b"].transfer_leadership("a")


def test_timeout_now_campaign_overrides_the_lease_of_followers():
    cluster = Cluster(("a", "b", "c"))
    leader = cluster.elect("a")
    leader.transfer_leadership("c")
    cluster.deliver()
    assert cluster.leaders() == ["c"]
    record = cluster.nodes["b"].vote_audit[-1]
    assert record.candidate == "c" and record.granted


def read(cluster, leader_id, context):
    cluster.nodes[leader_id].read_index(context)
    cluster.process(leader_id)
    cluster.deliver()
    return [
        state
        for ready in cluster.readies[leader_id]
        for state in ready.read_states
        if state.context == context
    ]


def test_read_index_needs_a_quorum_round():
    cluster = Cluster()
    leader = cluster.elect("a")
    cluster.propose("a", b"x")
    cluster.isolate("a")
    assert read(cluster, "a", b"r1") == []
    cluster.heal()
    cluster.tick(1)
    states = [s for r in cluster.readies["a"] for s in r.read_states if s.context == b"r1"]
    assert [s.index for s in states] == [leader.commit_index]


def test_a_read_waits_for_the_leader_to_commit_in_its_term():
    cluster = Cluster()
    leader = cluster.elect_without_replication("a")
    assert leader.state is StateRole.LEADER and leader.commit_index == 0
    cluster.outbox = []
    leader.read_index(b"early")
    cluster.process("a")
    assert not any(isinstance(m, Heartbeat) for _, _, m in cluster.outbox)
    cluster.tick(2)
    states = [s for r in cluster.readies["a"] for s in r.read_states if s.context == b"early"]
    assert len(states) == 1 and states[0].index == leader.commit_index >= 1


def test_only_the_leader_serves_reads():
    cluster = Cluster()
    cluster.elect("a")
    with pytest.raises(NotLeader) as raised:
        cluster.nodes["b"].read_index(b"r")
    assert raised.value.leader_hint == "a"


def test_a_deposed_leader_cannot_confirm_reads():
    cluster = Cluster()
    old = cluster.elect("a")
    cluster.isolate("a")
    cluster.tick(30, only=["b", "c"])
    cluster.nodes["a"].read_index(b"stale")
    cluster.process("a")
    cluster.deliver()
    assert not [s for r in cluster.readies["a"] for s in r.read_states]
    assert old.state is StateRole.LEADER  # it does not know yet, but cannot answer


def test_lease_reads_need_check_quorum():
    with pytest.raises(ValueError):
        Cluster(lease_reads=True, check_quorum=False)


def test_lease_reads_skip_the_round_while_the_lease_holds():
    cluster = Cluster(lease_reads=True, election_ticks_min=10, heartbeat_ticks=1)
    cluster.tick(12)
    leader_id = cluster.leaders()[0]
    cluster.tick(2)  # a confirmed heartbeat round grants the lease
    cluster.outbox = []
    cluster.nodes[leader_id].read_index(b"lease")
    cluster.process(leader_id)
    assert not any(isinstance(m, Heartbeat) for _, _, m in cluster.outbox)
    assert [s.context for s in cluster.readies[leader_id][-1].read_states] == [b"lease"]


def test_an_isolated_lease_holder_stops_serving_before_anyone_else_can_lead():
    cluster = Cluster(lease_reads=True, election_ticks_min=10, heartbeat_ticks=1)
    cluster.tick(12)
    old_id = cluster.leaders()[0]
    old = cluster.nodes[old_id]
    cluster.tick(2)
    cluster.isolate(old_id)
    served_after_new_leader = []
    for tick in range(40):
        cluster.tick(1)
        new_leader = [n for n in cluster.leaders() if n != old_id]
        if old.state is StateRole.LEADER:
            old.read_index(b"t%d" % tick)
            cluster.process(old_id)
            if new_leader and cluster.readies[old_id][-1].read_states:
                served_after_new_leader.append(tick)
    assert [n for n in cluster.leaders() if n != old_id], "the majority never elected anyone"
    assert served_after_new_leader == []
