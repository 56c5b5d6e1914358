"""The failover policy's rules (caddy.failover), one test each."""

from __future__ import annotations

from dataclasses import replace

import pytest

from caddy.failover import (
    ClusterView,
    Decision,
    Health,
    HealthHistory,
    PolicySettings,
    PromoteLearner,
    RemoveVoter,
    TransferLeadership,
    Verdict,
    carry_out,
    decide,
)
from tests.unit.cluster_views import NOW, OK, leader_view
from tests.unit.raft.cluster import Cluster

SETTINGS = PolicySettings(stabilization_s=10, min_quorum=3, max_lag_entries=5)


def failed(ago: float, reason: str = "check failed") -> Verdict:
    return Verdict(Health.FAILED, NOW - ago, reason)


def view(**changes: object) -> ClusterView:
    return leader_view(**changes)


def health(**states: Verdict) -> dict[str, Verdict]:
    return {"n1": OK, "n2": OK, "n3": OK, "n4": OK, **states}


# ----- hysteresis -----------------------------------------------------------------------------


def test_a_node_is_unknown_until_threshold_results_agree() -> None:
    history = HealthHistory(threshold=3)
    assert not history.record(True, 1.0)
    assert not history.record(False, 2.0, "down")
    assert not history.record(True, 3.0)
    assert not history.record(True, 4.0)
    assert history.state is Health.UNKNOWN
    assert history.record(True, 5.0)
    assert (history.state, history.since) == (Health.HEALTHY, 5.0)


def test_failed_after_threshold_consecutive_failures_with_the_last_reason() -> None:
    history = HealthHistory(threshold=3)
    for now in range(3):
        history.record(True, now)
    assert not history.record(False, 10.0, "a")
    assert not history.record(False, 11.0, "b")
    assert history.record(False, 12.0, "c")
    assert history.verdict() == Verdict(Health.FAILED, 12.0, "c")
    history.record(False, 13.0, "d")
    assert history.verdict() == Verdict(Health.FAILED, 12.0, "d")  # since stays


def test_one_pass_between_failures_starts_the_count_again() -> None:
    history = HealthHistory(threshold=3)
    for now in range(3):
        history.record(True, now)
    for passed in (False, False, True, False, False):
        assert not history.record(passed, 5.0)
    assert history.state is Health.HEALTHY


def test_recovered_only_after_threshold_passes() -> None:
    history = HealthHistory(threshold=2)
    for now in range(2):
        history.record(False, now, "down")
    assert history.state is Health.FAILED
    assert not history.record(True, 5.0)
    assert not history.record(False, 6.0, "down")
    assert not history.record(True, 7.0)
    assert history.record(True, 8.0)
    assert history.verdict() == Verdict(Health.HEALTHY, 8.0, "")


# ----- when the policy acts at all -------------------------------------------------------------


def test_all_well_means_nothing_to_do_and_nothing_to_explain() -> None:
    assert decide(view(), SETTINGS) == Decision()


def test_a_follower_only_reports() -> None:
    sick = view(leader=False, health=health(n1=failed(60), n2=failed(60)))
    assert decide(sick, SETTINGS) == Decision()


def test_no_action_without_quorum() -> None:
    decision = decide(view(has_quorum=False, health=health(n1=failed(1))), SETTINGS)
    assert decision.action is None
    assert "no action without quorum" in (decision.waiting or "")


def test_no_action_while_a_membership_change_is_in_flight() -> None:
    decision = decide(view(change_pending=True, health=health(n2=failed(60))), SETTINGS)
    assert decision.action is None
    assert "membership change" in (decision.waiting or "")


def test_no_two_actions_within_the_minimum_interval() -> None:
    sick = view(health=health(n1=failed(1)), last_action_at=NOW - 1)
    decision = decide(sick, SETTINGS)
    assert decision.action is None
    assert "next action allowed in 4.0 s" in (decision.waiting or "")
    later = replace(sick, last_action_at=NOW - SETTINGS.min_action_interval_s)
    assert isinstance(decide(later, SETTINGS).action, TransferLeadership)


def test_disabled_reports_the_trouble_and_does_nothing() -> None:
    decision = decide(view(health=health(n1=failed(1))), replace(SETTINGS, enabled=False))
    assert decision.action is None
    assert "automatic failover is off" in (decision.waiting or "")


# ----- an unhealthy leader ---------------------------------------------------------------------


def test_an_unhealthy_leader_hands_over_to_the_voter_with_the_longest_log() -> None:
    sick = view(health=health(n1=failed(1, "disk stalled")), match={"n1": 50, "n2": 48, "n3": 50})
    decision = decide(sick, SETTINGS)
    assert decision.action == TransferLeadership("n3", reason=decision.action.reason)
    assert "disk stalled" in decision.action.reason


def test_a_tie_goes_to_the_smaller_id() -> None:
    decision = decide(view(health=health(n1=failed(1))), SETTINGS)
    assert decision.action == TransferLeadership("n2", reason=decision.action.reason)


def test_a_draining_leader_hands_over() -> None:
    decision = decide(view(draining=frozenset({"n1"})), SETTINGS)
    assert isinstance(decision.action, TransferLeadership)
    assert "draining" in decision.action.reason


@pytest.mark.parametrize(
    "why, changes",
    [
        ("failed", {"health": health(n1=failed(1), n2=failed(1), n3=failed(1))}),
        ("unknown", {"health": {"n1": failed(1)}}),
        ("draining", {"health": health(n1=failed(1)), "draining": frozenset({"n2", "n3"})}),
        ("lagging", {"health": health(n1=failed(1)), "match": {"n1": 50, "n2": 44, "n3": 10}}),
        (
            "only learners and witnesses",
            {
                "health": health(n1=failed(1), n5=OK),
                "voters": frozenset({"n1"}),
                "witnesses": frozenset({"n5"}),
                "match": {"n1": 50, "n4": 50, "n5": 50},
            },
        ),
    ],
)
def test_leadership_goes_only_to_a_healthy_caught_up_data_voter(
    why: str, changes: dict[str, object]
) -> None:
    decision = decide(view(**changes), SETTINGS)
    assert decision.action is None, why
    assert "no healthy caught-up voter" in (decision.waiting or "")


def test_an_unhealthy_leader_changes_no_membership() -> None:
    sick = view(health=health(n1=failed(1), n3=failed(60)), match={"n1": 50, "n2": 10, "n3": 50})
    assert decide(sick, SETTINGS).action is None


# ----- replacing a failed voter ----------------------------------------------------------------


def test_a_voter_failed_shorter_than_the_stabilization_time_is_left_alone() -> None:
    assert decide(view(health=health(n3=failed(9.9))), SETTINGS) == Decision()


def test_a_stabilized_failure_promotes_a_caught_up_learner() -> None:
    decision = decide(view(health=health(n3=failed(10))), SETTINGS)
    assert decision.action == PromoteLearner("n4", reason="replaces failed voter n3")


def test_a_learner_lacking_committed_entries_is_never_promoted() -> None:
    behind = view(health=health(n3=failed(60)), match={"n1": 60, "n2": 60, "n3": 40, "n4": 49})
    behind = replace(behind, commit_index=50, last_index=51)
    decision = decide(behind, SETTINGS)
    assert not isinstance(decision.action, PromoteLearner)
    assert "below min_quorum 3" in (decision.waiting or "")


def test_an_unhealthy_learner_is_never_promoted() -> None:
    decision = decide(view(health=health(n3=failed(60), n4=failed(1))), SETTINGS)
    assert decision.action is None


def test_after_the_promotion_the_failed_voter_is_removed() -> None:
    promoted = view(
        voters=frozenset({"n1", "n2", "n3", "n4"}),
        learners=frozenset(),
        health=health(n3=failed(30)),
    )
    decision = decide(promoted, SETTINGS)
    assert decision.action == RemoveVoter("n3", reason="failed 30.0 s ago")


def test_a_second_learner_is_not_promoted_for_the_same_failure() -> None:
    promoted = view(
        voters=frozenset({"n1", "n2", "n3", "n4"}),
        learners=frozenset({"n5"}),
        health=health(n3=failed(30), n5=OK),
        match={"n1": 50, "n2": 50, "n3": 10, "n4": 50, "n5": 50},
    )
    assert isinstance(decide(promoted, SETTINGS).action, RemoveVoter)


def test_the_floor_three_voters_with_two_failed_never_lose_one() -> None:
    # Even with a (wrong) belief in quorum, nothing takes the cluster below min_quorum voters.
    two_down = view(learners=frozenset(), health=health(n2=failed(60), n3=failed(90)))
    decision = decide(two_down, SETTINGS)
    assert decision.action is None
    assert "would leave 2 voters, below min_quorum 3" in (decision.waiting or "")


def test_without_a_learner_a_larger_cluster_sheds_a_dead_voter_down_to_the_floor() -> None:
    five = view(
        voters=frozenset({"n1", "n2", "n3", "n4", "n5"}),
        learners=frozenset(),
        health={"n1": OK, "n2": OK, "n3": OK, "n4": OK, "n5": failed(11)},
        desired_voters=5,
    )
    assert decide(five, SETTINGS).action == RemoveVoter("n5", reason="failed 11.0 s ago")


def test_the_longest_failed_voter_goes_first() -> None:
    five = view(
        voters=frozenset({"n1", "n2", "n3", "n4", "n5"}),
        learners=frozenset(),
        health={"n1": OK, "n2": OK, "n3": OK, "n4": failed(20), "n5": failed(40)},
        desired_voters=5,
    )
    decision = decide(five, replace(SETTINGS, min_quorum=1))
    assert isinstance(decision.action, RemoveVoter) and decision.action.node == "n5"


def test_no_removal_that_leaves_the_healthy_members_without_quorum() -> None:
    # 5 voters: n5 failed long, n4 failed lately, n3 unknown: without n5 the healthy are n1, n2
    # of 4 voters, short of the 3 needed.
    five = view(
        voters=frozenset({"n1", "n2", "n3", "n4", "n5"}),
        learners=frozenset(),
        health={"n1": OK, "n2": OK, "n4": failed(1), "n5": failed(40)},
        desired_voters=5,
    )
    decision = decide(five, replace(SETTINGS, min_quorum=1))
    assert decision.action is None
    assert "no quorum" in (decision.waiting or "")


def test_witnesses_count_for_the_quorum_of_what_remains() -> None:
    # n1, n2 voters, witness w, failed voter n3: without n3, n1 + n2 + w make progress.
    with_witness = view(
        voters=frozenset({"n1", "n2", "n3"}),
        learners=frozenset(),
        witnesses=frozenset({"w"}),
        health=health(n3=failed(60), w=OK),
    )
    decision = decide(with_witness, replace(SETTINGS, min_quorum=2))
    assert decision.action == RemoveVoter("n3", reason="failed 60.0 s ago")


# ----- carrying a decision out on a Raft core --------------------------------------------------


def test_carry_out_promotes_a_caught_up_learner_and_removes_a_voter() -> None:
    cluster = Cluster(("a", "b", "c"), learners=("l",))
    leader = cluster.elect("a")
    cluster.propose("a", b"x")
    assert carry_out(leader, PromoteLearner("l", reason="r")) is None
    cluster.deliver()
    cluster.tick()
    assert leader.membership.voters == {"a", "b", "c", "l"}
    assert carry_out(leader, RemoveVoter("c", reason="r")) is None
    assert leader.membership.voters == {"a", "b", "l"}


def test_carry_out_refuses_a_learner_the_live_log_shows_behind() -> None:
    cluster = Cluster(("a", "b", "c"), learners=("l",))
    leader = cluster.elect("a")
    cluster.cut = {("a", "l")}
    cluster.propose("a", b"x", b"y")
    refusal = carry_out(leader, PromoteLearner("l", reason="r"))
    assert refusal is not None and "l lacks committed entries" in refusal
    assert leader.membership.learners == {"l"}


def test_carry_out_says_why_raft_refused() -> None:
    cluster = Cluster(("a", "b", "c"))
    cluster.elect("a")
    follower = cluster.nodes["b"]
    assert carry_out(follower, RemoveVoter("c", reason="r")) == "not the leader (leader: a)"
    leader = cluster.nodes["a"]
    assert "not a voter" in (carry_out(leader, TransferLeadership("zz", reason="r")) or "")
