"""Operator membership changes (caddy.reconfig): every refusal rule, and what passes."""

from __future__ import annotations

import pytest

from caddy.failover import ClusterView, Health, Verdict
from caddy.reconfig import (
    Change,
    change_refusal,
    restart_refusal,
    transfer_refusal,
    transfer_target,
)
from tests.unit.cluster_views import OK, leader_view

DOWN = Verdict(Health.FAILED, 0.0, "unreachable")
LAG = 5


def view(**changes: object) -> ClusterView:
    """n1 leads voters n1..n3, learner n4 (n5 healthy, not a member), all at index 50."""
    return leader_view(**{"health": health(), **changes})


def health(**states: Verdict) -> dict[str, Verdict]:
    return {"n1": OK, "n2": OK, "n3": OK, "n4": OK, "n5": OK, **states}


@pytest.mark.parametrize(
    "change, node",
    [
        (Change.ADD_LEARNER, "n5"),
        (Change.ADD_WITNESS, "n5"),
        (Change.PROMOTE, "n4"),
        (Change.DEMOTE, "n3"),
        (Change.REMOVE, "n3"),
        (Change.REMOVE, "n4"),
    ],
)
def test_a_healthy_cluster_allows_every_sensible_change(change: Change, node: str) -> None:
    assert change_refusal(view(), change, node, LAG) is None


def test_nothing_while_another_change_is_in_flight_not_even_forced() -> None:
    refusal = change_refusal(view(change_pending=True), Change.REMOVE, "n3", LAG, force=True)
    assert refusal == "another membership change is in progress; try again when it is committed"


@pytest.mark.parametrize(
    "change, node, reason",
    [
        (Change.ADD_LEARNER, "n4", "n4 is already a learner"),
        (Change.PROMOTE, "n3", "n3 is not a learner"),
        (Change.DEMOTE, "n4", "n4 is not a voter"),
        (Change.REMOVE, "n9", "n9 is not a member"),
    ],
)
def test_changes_that_make_no_sense_say_so(change: Change, node: str, reason: str) -> None:
    assert change_refusal(view(), change, node, LAG) == reason


@pytest.mark.parametrize("change", [Change.REMOVE, Change.DEMOTE])
def test_the_leader_is_not_removed_or_demoted(change: Change) -> None:
    refusal = change_refusal(view(), change, "n1", LAG, force=True)
    assert refusal == "n1 leads: move leadership first (caddy-ctl transfer-leader)"


def test_a_removal_that_breaks_quorum_is_refused_unless_forced() -> None:
    down = view(health=health(n2=DOWN))
    refusal = change_refusal(down, Change.REMOVE, "n3", LAG)
    assert refusal == (
        "remove n3 refused: afterwards 1 of its 2 voting members would be healthy and caught up "
        "(n1): a quorum needs 2, a data voter among them"
    )
    assert change_refusal(down, Change.REMOVE, "n3", LAG, force=True) is None
    assert change_refusal(down, Change.REMOVE, "n2", LAG) is None  # the dead one may go


def test_adding_a_voter_that_would_stall_commits_is_refused() -> None:
    # 3 voters, one down: a fourth, empty voter makes 2 caught-up of 4, short of the 3 needed.
    refusal = change_refusal(view(health=health(n3=DOWN)), Change.ADD_VOTER, "n5", LAG)
    assert refusal is not None and refusal.startswith("add voter n5 refused: afterwards 2 of its 4")
    assert change_refusal(view(), Change.ADD_VOTER, "n5", LAG) is None


def test_a_demotion_that_breaks_quorum_is_refused_and_cannot_be_forced() -> None:
    refusal = change_refusal(view(health=health(n2=DOWN)), Change.DEMOTE, "n3", LAG, force=True)
    assert refusal is not None and refusal.startswith("demote n3 refused")


def test_a_removal_never_leaves_the_committed_log_on_the_leader_alone() -> None:
    # n3 is healthy but lacks entry 50: without n2, n1 alone would hold it.
    lagging = view(match={"n1": 50, "n2": 50, "n3": 40, "n4": 50})
    assert change_refusal(lagging, Change.REMOVE, "n2", LAG) == (
        "remove n2 refused: afterwards 1 of its 2 voting members would be healthy and caught up "
        "(n1): a quorum needs 2, a data voter among them"
    )


def test_promotion_needs_a_healthy_caught_up_learner() -> None:
    writing = view(match={"n1": 50, "n2": 50, "n3": 50, "n4": 49})  # one entry in flight
    assert change_refusal(writing, Change.PROMOTE, "n4", LAG) is None
    behind = view(match={"n1": 50, "n2": 50, "n3": 50, "n4": 44})
    assert change_refusal(behind, Change.PROMOTE, "n4", LAG) == (
        "n4 lacks committed entries (44 < commit index 50, at most 5 behind)"
    )
    far = view(match={"n1": 60, "n2": 60, "n3": 60, "n4": 50}, last_index=60)
    assert change_refusal(far, Change.PROMOTE, "n4", LAG) == (
        "n4 lags 10 entries behind the leader (at most 5)"
    )
    sick = view(health=health(n4=DOWN))
    assert change_refusal(sick, Change.PROMOTE, "n4", LAG) == "n4 is not healthy (failed)"


@pytest.mark.parametrize(
    "changes, target, reason",
    [
        ({}, "n1", "n1 already leads"),
        ({}, "n4", "n4 is a learner, not a voter: only a data voter may lead"),
        (
            {"witnesses": frozenset({"w"})},
            "w",
            "w is a witness, not a voter: only a data voter may lead",
        ),
        ({}, "n9", "n9 is not a member: only a data voter may lead"),
        ({"health": health(n3=DOWN)}, "n3", "n3 is not healthy (failed)"),
        (
            {"match": {"n1": 50, "n2": 50, "n3": 30}},
            "n3",
            "n3 is not caught up (match 30, commit 50)",
        ),
    ],
)
def test_leadership_goes_only_to_a_healthy_caught_up_data_voter(
    changes: dict[str, object], target: str, reason: str
) -> None:
    assert transfer_refusal(view(**changes), target, LAG) == reason


def test_without_a_target_leadership_goes_to_the_longest_log() -> None:
    assert transfer_refusal(view(), "n3", LAG) is None
    assert transfer_target(view(match={"n1": 50, "n2": 49, "n3": 50}), LAG) == "n3"
    assert transfer_target(view(health=health(n2=DOWN, n3=DOWN)), LAG) is None


def test_restart_is_safe_only_with_every_other_voter_healthy_and_caught_up() -> None:
    assert restart_refusal(view(), "n2", LAG) is None
    assert restart_refusal(view(), "n4", LAG) is None  # a learner's restart costs no quorum
    assert restart_refusal(view(health=health(n3=DOWN)), "n2", LAG) == (
        "not every other voting member is healthy and caught up: n3 (failed)"
    )
    lagging = view(match={"n1": 50, "n2": 50, "n3": 20})
    assert restart_refusal(lagging, "n2", LAG) == (
        "not every other voting member is healthy and caught up: n3 (match 20, commit 50)"
    )
    assert restart_refusal(view(), "n1", LAG) == (
        "n1 leads: move leadership first (caddy-ctl transfer-leader)"
    )
    assert restart_refusal(view(), "n9", LAG) == "n9 is not a member"


def test_restart_of_one_of_two_voters_is_never_safe() -> None:
    two = view(voters=frozenset({"n1", "n2"}), learners=frozenset())
    assert restart_refusal(two, "n2", LAG) == "without n2 the others (n1) have no quorum"


def test_under_writes_a_follower_a_few_entries_behind_may_still_take_over() -> None:
    busy = view(match={"n1": 60, "n2": 57, "n3": 58}, commit_index=58, last_index=60)
    assert transfer_refusal(busy, "n2", LAG) is None
    assert transfer_target(busy, LAG) == "n3"
    assert restart_refusal(busy, "n3", LAG) is None
