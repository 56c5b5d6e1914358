"""caddy/quorum.py: quorum math for voters, witnesses and learners, joint configurations, the
reachability view, and the tracker's transitions. The safety property behind it all: two sets
of nodes that share no member can never both make progress."""

from hypothesis import given
from hypothesis import strategies as st

from caddy.quorum import (
    PARTITION_DETECTED,
    PARTITION_HEALED,
    QUORUM_LOST,
    QUORUM_REGAINED,
    QuorumRule,
    QuorumTracker,
    Reachability,
    Transition,
    VotingConfig,
    contact_window_ms,
)
from caddy.raft.types import Membership


def config(voters, witnesses=(), learners=()):
    return VotingConfig(frozenset(voters), frozenset(witnesses), frozenset(learners))


def rule(*configs):
    return QuorumRule(tuple(configs))


def test_a_majority_of_voters_makes_progress_and_fewer_do_not():
    three = config("abc")
    assert three.needed == 2 and three.tolerated_failures == 1
    assert three.can_progress("ab") and three.can_progress("abc")
    assert not three.can_progress("a") and not three.can_progress("")
    assert config("abcde").tolerated_failures == 2
    assert config("abcd").needed == 3 and config("abcd").tolerated_failures == 1
    assert config("a").needed == 1 and config("a").tolerated_failures == 0
    assert config("a").can_progress("a")


def test_learners_do_not_vote():
    cluster = config("abc", learners="xy")
    assert cluster.needed == 2
    assert not cluster.can_progress("axy")
    assert cluster.can_progress("ab")


def test_a_witness_votes_but_progress_needs_a_data_voter():
    cluster = config("ab", witnesses="w")
    assert cluster.needed == 2 and cluster.tolerated_failures == 1
    assert cluster.can_progress("aw") and cluster.can_progress("bw")
    assert not cluster.can_progress("w")
    mostly_witnesses = config("a", witnesses="vw")
    assert not mostly_witnesses.can_progress("vw")  # a majority, but none of it can lead
    assert mostly_witnesses.can_progress("av")
    assert mostly_witnesses.tolerated_failures == 0  # losing `a` stops it


def test_a_configuration_without_voters_never_makes_progress():
    assert not config("").can_progress("abc")
    assert config("").tolerated_failures == 0
    assert not QuorumRule(()).can_progress("abc")


def test_during_a_change_progress_needs_a_majority_of_both_configurations():
    adding = rule(config("abc"), config("abcd"))
    assert adding.needed == 3
    assert not adding.can_progress("ab")  # the old majority, not the new
    assert adding.can_progress("abd")
    removing = rule(config("abcd"), config("abc"))
    assert not removing.can_progress("ab")
    assert removing.can_progress("abc")
    assert removing.tolerated_failures == 1


def test_a_rule_from_memberships_drops_repeats_and_names_every_member():
    membership = Membership(frozenset("ab"), frozenset("l"), frozenset("w"))
    single = QuorumRule.of(membership, membership)
    assert len(single.configs) == 1
    assert single.voters == frozenset("ab") and single.witnesses == frozenset("w")
    assert single.members == frozenset("abwl")


members = st.sets(st.sampled_from("abcdefg"), max_size=7)


@st.composite
def configs(draw):
    voting = sorted(draw(st.sets(st.sampled_from("abcdefg"), min_size=1, max_size=7)))
    witnesses = draw(st.sets(st.sampled_from(voting), max_size=len(voting)))
    return config(set(voting) - witnesses, witnesses)


@given(st.lists(configs(), min_size=1, max_size=2), st.data())
def test_two_disjoint_sides_never_both_make_progress(cfgs, data):
    quorum = rule(*cfgs)
    everyone = sorted(quorum.members)
    left = data.draw(st.sets(st.sampled_from(everyone)))
    right = set(everyone) - left  # the other side of a cut through the cluster
    assert not (quorum.can_progress(left) and quorum.can_progress(right))


@given(st.lists(configs(), min_size=1, max_size=2), members, members)
def test_more_reachable_nodes_never_lose_progress(cfgs, some, more):
    quorum = rule(*cfgs)
    if quorum.can_progress(some):
        assert quorum.can_progress(some | more)


@given(configs(), st.data())
def test_any_tolerated_failures_leave_progress(cfg, data):
    failed = data.draw(
        st.sets(st.sampled_from(sorted(cfg.voting)), max_size=cfg.tolerated_failures)
    )
    assert cfg.can_progress(cfg.voting - failed) == bool(cfg.voters)


def test_direct_contact_within_the_window_is_reachable_unless_the_member_left():
    view = Reachability("a", window_s=1.0)
    everyone = "abcde"
    assert view.reachable(everyone, 0.0) == {"a"}  # nothing heard yet: only itself
    view.heard_from("b", 10.0)
    view.heard_from("c", 10.2)
    view.gossip_state("c", "dead")  # a rumour: c was heard a moment ago
    view.gossip_state("d", "alive")  # alive to gossip, but never heard by this node
    assert view.reachable(everyone, 10.5) == {"a", "b", "c"}
    assert view.reachable(everyone, 11.1) == {"a", "c"}  # b's contact went stale
    view.heard_from("b", 9.0)  # an older contact told late changes nothing
    assert view.reachable(everyone, 11.1) == {"a", "c"}
    view.gossip_state("c", "left")
    assert view.reachable(everyone, 11.1) == {"a"}
    view.gossip_state("c", "alive")  # back, with a new incarnation
    assert view.reachable(everyone, 11.1) == {"a", "c"}


def test_the_tracker_reports_quorum_lost_regained_and_the_partition_sides():
    tracker = QuorumTracker(QuorumRule.of(Membership(frozenset({"n1", "n2", "n3"}))), now=5.0)
    assert tracker.state.has_quorum and tracker.state.since == 5.0
    assert tracker.update({"n1", "n2", "n3"}, 6.0) == []
    assert tracker.update({"n1"}, 7.0) == [
        Transition(QUORUM_LOST, ("n1",), ("n2", "n3")),
        Transition(PARTITION_DETECTED, ("n1",), ("n2", "n3")),
    ]
    assert tracker.state.to_status() == {
        "has_quorum": False,
        "voters": ["n1", "n2", "n3"],
        "witnesses": [],
        "reachable": ["n1"],
        "needed": 2,
        "since": 7.0,
    }
    assert tracker.update({"n1"}, 8.0) == []  # no news
    assert tracker.state.since == 7.0
    assert tracker.update({"n1", "n2", "outsider"}, 9.0) == [
        Transition(QUORUM_REGAINED, ("n1", "n2"), ("n3",)),
        Transition(PARTITION_DETECTED, ("n1", "n2"), ("n3",)),  # the sides changed
    ]
    assert tracker.state.since == 9.0 and tracker.state.reachable == ("n1", "n2")
    assert tracker.update({"n1", "n2", "n3"}, 10.0) == [
        Transition(PARTITION_HEALED, ("n1", "n2", "n3"), ())
    ]
    assert tracker.state.since == 9.0  # has_quorum did not change


def test_a_new_configuration_is_judged_against_the_same_reachability():
    three = Membership(frozenset({"n1", "n2", "n3"}))
    five = Membership(frozenset({"n1", "n2", "n3", "n4", "n5"}))
    tracker = QuorumTracker(QuorumRule.of(three), now=0.0)
    assert tracker.update({"n1", "n2"}, 1.0) == [
        Transition(PARTITION_DETECTED, ("n1", "n2"), ("n3",))
    ]
    transitions = tracker.update({"n1", "n2"}, 2.0, QuorumRule.of(three, five))
    assert transitions == [
        Transition(QUORUM_LOST, ("n1", "n2"), ("n3", "n4", "n5")),
        Transition(PARTITION_DETECTED, ("n1", "n2"), ("n3", "n4", "n5")),
    ]
    assert tracker.state.needed == 3
    assert contact_window_ms(300, 250) == 750 and contact_window_ms(300, 100) == 300
    assert contact_window_ms(1000, 250) == 1000
