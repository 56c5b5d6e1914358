"""Elections: randomized timeouts, votes and their persistence, PreVote, CheckQuorum, audit."""

import random

from caddy.raft.memory_storage import MemoryLogStorage
from caddy.raft.messages import RequestVote, VoteResponse
from caddy.raft.node import RaftNode
from caddy.raft.ready import StateRole
from caddy.raft.types import Entry, EntryKind, HardState, Membership
from tests.unit.raft.cluster import Cluster


def lone_node(seed, **settings):
    storage = MemoryLogStorage()
    return RaftNode(
        "a",
        Membership(frozenset({"a", "b", "c"})),
        storage_state=storage.load(),
        rng=random.Random(seed),
        heartbeat_ticks=1,
        election_ticks_min=10,
        election_ticks_max=50,
        **settings,
    )


def ticks_until_campaign(node):
    for tick in range(1, 1000):
        node.tick()
        if node.state is not StateRole.FOLLOWER:
            return tick
    raise AssertionError("never campaigned")


def test_election_timeouts_are_randomized_from_the_handed_random_source():
    timeouts = {ticks_until_campaign(lone_node(seed)) for seed in range(20)}
    assert len(timeouts) > 5
    assert all(10 <= timeout <= 50 for timeout in timeouts)
    assert ticks_until_campaign(lone_node(3)) == ticks_until_campaign(lone_node(3))


def test_ticks_elect_exactly_one_leader_that_appends_a_noop():
    cluster = Cluster(("a", "b", "c", "d", "e"))
    cluster.tick(60)
    assert len(cluster.leaders()) == 1
    leader = cluster.nodes[cluster.leaders()[0]]
    noop = [e for e in cluster.applied[leader.id] if e.term == leader.term]
    assert noop and noop[0].kind is EntryKind.NOOP
    assert all(cluster.nodes[n].leader == leader.id for n in cluster.nodes)


def test_a_single_voter_elects_itself_and_commits():
    cluster = Cluster(("a",))
    cluster.tick(25)
    assert cluster.leaders() == ["a"]
    cluster.propose("a", b"x")
    assert cluster.commands("a") == [b"x"]


def test_vote_is_persisted_and_synced_in_the_same_ready_as_the_response():
    cluster = Cluster(pre_vote=False)
    cluster.nodes["a"].campaign()
    cluster.process("a")
    requests = [(s, t, m) for s, t, m in cluster.outbox if isinstance(m, RequestVote)]
    assert requests
    cluster.outbox = []
    cluster.nodes["b"].step(requests[0][2])
    ready = cluster.nodes["b"].ready()
    responses = [m for _, m in ready.messages if isinstance(m, VoteResponse)]
    assert responses and responses[0].granted
    assert ready.hard_state == HardState(term=1, vote="a", commit=0)
    assert ready.must_sync


def test_candidate_increments_term_and_votes_for_itself_before_asking():
    cluster = Cluster(pre_vote=False)
    cluster.nodes["a"].campaign()
    ready = cluster.nodes["a"].ready()
    assert ready.hard_state == HardState(term=1, vote="a", commit=0)
    assert ready.must_sync
    assert {to for to, m in ready.messages if isinstance(m, RequestVote)} == {"b", "c"}


def test_up_to_date_check_refuses_a_candidate_with_a_shorter_log():
    cluster = Cluster(pre_vote=False, check_quorum=False)
    cluster.elect("a")
    cluster.cut = {("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")}
    cluster.propose("a", b"x")  # committed by a and b only
    cluster.heal()
    cluster.crash("a")
    cluster.nodes["c"].campaign()
    cluster.deliver()
    assert cluster.nodes["c"].state is not StateRole.LEADER
    record = [r for r in cluster.nodes["b"].vote_audit if r.candidate == "c"][-1]
    assert not record.granted and record.reason == "candidate log is behind ours"
    cluster.nodes["b"].campaign()
    cluster.deliver()
    assert cluster.nodes["b"].state is StateRole.LEADER


def test_one_vote_per_term():
    cluster = Cluster(pre_vote=False)
    b = cluster.nodes["b"]
    b.step(RequestVote(1, "a", 0, 0, False, False))
    b.step(RequestVote(1, "c", 0, 0, False, False))
    audit = b.vote_audit
    assert [(r.candidate, r.granted) for r in audit] == [("a", True), ("c", False)]
    assert audit[1].reason == "already voted for a"
    b.step(RequestVote(1, "a", 0, 0, False, False))
    assert b.vote_audit[-1].granted  # a repeated request gets the same answer


def test_vote_survives_a_restart_from_storage():
    cluster = Cluster(pre_vote=False)
    cluster.nodes["b"].step(RequestVote(1, "a", 0, 0, False, False))
    cluster.process("b")
    cluster.outbox = []
    cluster.crash("b")
    b = cluster.start("b")
    assert (b.term, b.vote) == (1, "a")
    b.step(RequestVote(1, "c", 0, 0, False, False))
    assert not b.vote_audit[-1].granted


def test_prevote_does_not_raise_terms_and_a_rejoining_node_does_not_disrupt():
    cluster = Cluster()
    leader = cluster.elect("a")
    term = leader.term
    cluster.isolate("c")
    cluster.tick(100)  # c keeps pre-campaigning alone
    assert cluster.nodes["c"].term == term
    assert cluster.nodes["c"].state is StateRole.PRE_CANDIDATE
    cluster.propose("a", b"while c was away")
    cluster.heal()
    cluster.tick(30)
    assert cluster.leaders() == ["a"] and leader.term == term
    assert cluster.commands("c") == [b"while c was away"]


def test_without_prevote_a_rejoining_node_forces_a_new_election():
    cluster = Cluster(pre_vote=False, check_quorum=False)
    leader = cluster.elect("a")
    term = leader.term
    cluster.isolate("c")
    cluster.tick(60)
    assert cluster.nodes["c"].term > term + 1
    cluster.heal()
    cluster.tick(60)
    assert all(node.term > term + 1 for node in cluster.nodes.values())


def test_prevote_rejected_while_following_a_live_leader():
    cluster = Cluster()
    cluster.elect("a")
    b = cluster.nodes["b"]
    b.step(RequestVote(b.term + 1, "c", 100, b.term, True, False))
    record = b.vote_audit[-1]
    assert record.pre_vote and not record.granted
    assert b.term == cluster.nodes["a"].term


def test_check_quorum_makes_an_isolated_leader_step_down():
    cluster = Cluster()
    leader = cluster.elect("a")
    cluster.isolate("a")
    cluster.tick(25, only=["a"])
    assert leader.state is StateRole.FOLLOWER and leader.leader is None
    assert leader.step_down_reason == (
        f"CheckQuorum in term {leader.term}: heard from 1 of 3 voting members within an "
        "election timeout"
    )


def test_without_check_quorum_an_isolated_leader_stays():
    cluster = Cluster(check_quorum=False)
    leader = cluster.elect("a")
    cluster.isolate("a")
    cluster.tick(100, only=["a"])
    assert leader.state is StateRole.LEADER


def test_followers_in_a_leader_lease_ignore_higher_term_votes():
    cluster = Cluster(pre_vote=False)
    cluster.elect("a")
    b = cluster.nodes["b"]
    term = b.term
    b.step(RequestVote(term + 5, "c", 100, term, False, False))
    assert b.term == term
    assert b.vote_audit[-1].reason.startswith("ignored")


def test_a_stale_leader_learns_the_new_term_and_steps_down():
    cluster = Cluster()
    old = cluster.elect("a")
    cluster.isolate("a")
    cluster.tick(30, only=["b", "c"])
    assert len([n for n in ("b", "c") if cluster.nodes[n].state is StateRole.LEADER]) == 1
    cluster.heal()
    cluster.nodes["a"].tick()
    cluster.process("a")
    cluster.deliver()
    assert old.state is StateRole.FOLLOWER
    assert old.term == max(n.term for n in cluster.nodes.values())


def test_vote_audit_is_bounded():
    node = lone_node(1, vote_audit_size=4)
    for term in range(1, 10):
        node.step(RequestVote(term, "b", 0, 0, False, False))
    assert [r.term for r in node.vote_audit] == [6, 7, 8, 9]


def test_restart_recovers_log_and_term_and_reapplies_committed_entries():
    cluster = Cluster()
    cluster.elect("a")
    cluster.propose("a", b"one", b"two")
    term = cluster.nodes["b"].term
    cluster.crash("b")
    b = cluster.start("b")
    assert b.term == term and b.last_index == 3
    cluster.tick(2)  # the commit index is not synced on its own: heartbeats bring it back
    assert [e.data for e in cluster.applied["b"] if e.kind is EntryKind.COMMAND] == [b"one", b"two"]


def test_recovered_entries_must_follow_the_snapshot():
    storage = MemoryLogStorage()
    storage.append([Entry(1, 1), Entry(2, 1)])
    storage.set_hard_state(HardState(1, None, 5))
    try:
        RaftNode(
            "a",
            Membership(frozenset({"a"})),
            storage_state=storage.load(),
            rng=random.Random(1),
            heartbeat_ticks=1,
            election_ticks_min=10,
            election_ticks_max=20,
        )
    except ValueError as error:
        assert "commit" in str(error)
    else:
        raise AssertionError("a commit index beyond the log was accepted")
