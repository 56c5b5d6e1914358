"""The reconfiguration planner (caddy.reconfig_plan): the order of its steps, and that carrying
them out one by one, planning again after each, ends at the target."""

from __future__ import annotations

import random

import pytest

from caddy.raft.membership import ChangeKind, apply_change
from caddy.raft.types import Membership
from caddy.reconfig_plan import TRANSFER, Step, Target, plan

THREE = Membership(voters=frozenset({"n1", "n2", "n3"}))


def targets(**roles: str) -> dict[str, Target]:
    return {node: Target(role, f"tcp://127.0.0.1:71{node[1:]:0>2}") for node, role in roles.items()}


def steps_of(steps: list[Step]) -> list[str]:
    return [f"{step.action} {step.node}" for step in steps]


def test_the_same_membership_needs_nothing() -> None:
    assert plan(THREE, "n1", targets(n1="voter", n2="voter", n3="voter")) == []


def test_growing_adds_learners_first_then_promotes_them() -> None:
    steps = plan(THREE, "n1", targets(n1="voter", n2="voter", n3="voter", n4="voter", n5="voter"))
    assert steps_of(steps) == ["add_learner n4", "add_learner n5", "promote n4", "promote n5"]
    assert steps[0].address == "tcp://127.0.0.1:7104"
    assert steps[0].describe() == "add n4 as a learner (tcp://127.0.0.1:7104)"


def test_shrinking_removes_the_followers() -> None:
    five = Membership(voters=frozenset({"n1", "n2", "n3", "n4", "n5"}))
    steps = plan(five, "n1", targets(n1="voter", n2="voter", n3="voter"))
    assert steps_of(steps) == ["remove n4", "remove n5"]


def test_replacing_a_node_grows_before_it_shrinks() -> None:
    steps = plan(THREE, "n1", targets(n1="voter", n2="voter", n4="voter"))
    assert steps_of(steps) == ["add_learner n4", "promote n4", "remove n3"]


def test_the_leader_goes_last_after_leadership_moved_off_it() -> None:
    steps = plan(THREE, "n1", targets(n2="voter", n3="voter", n4="voter"))
    assert steps_of(steps) == ["add_learner n4", "promote n4", "transfer n1", "remove n1"]
    assert steps[2].action == TRANSFER and steps[2].describe() == "move leadership off n1"


def test_demoting_the_leader_moves_leadership_first() -> None:
    steps = plan(THREE, "n2", targets(n1="voter", n2="learner", n3="voter"))
    assert steps_of(steps) == ["transfer n2", "demote n2"]


def test_role_changes_between_data_roles_promote_and_demote() -> None:
    live = Membership(voters=frozenset({"n1", "n2", "n3"}), learners=frozenset({"n4"}))
    steps = plan(live, "n1", targets(n1="voter", n2="voter", n3="learner", n4="voter"))
    assert steps_of(steps) == ["promote n4", "demote n3"]


def test_a_witness_becoming_a_voter_leaves_and_rejoins_as_a_learner() -> None:
    live = Membership(voters=frozenset({"n1", "n2"}), witnesses=frozenset({"n3"}))
    steps = plan(live, "n1", targets(n1="voter", n2="voter", n3="voter"))
    assert steps_of(steps) == ["remove n3", "add_learner n3", "promote n3"]


def test_new_witnesses_join_as_witnesses() -> None:
    steps = plan(THREE, "n1", targets(n1="voter", n2="voter", n3="voter", w1="witness"))
    assert steps_of(steps) == ["add_witness w1"]
    assert steps[0].describe() == "add w1 as a witness (tcp://127.0.0.1:7101)"


def test_a_target_without_a_voter_is_refused() -> None:
    with pytest.raises(ValueError, match="no voter"):
        plan(THREE, "n1", targets(n1="learner", n2="witness"))


def carry_out(live: Membership, leader: str, step: Step, rng: random.Random) -> tuple:
    """What a step does to the membership and to who leads."""
    if step.action == TRANSFER:
        staying = sorted(live.voters - {step.node})
        return live, rng.choice(staying)
    return apply_change(live, step.change.raft_kind, step.node), leader


ROLES = ("voter", "learner", "witness", None)


@pytest.mark.parametrize("seed", range(300))
def test_replanning_after_every_step_reaches_any_target_safely(seed: int) -> None:
    """From a random membership to a random target: one step at a time, planning again after
    each (as caddy-ctl does), every step is a valid single change, the leader is never removed
    or demoted while it leads, the voting set keeps a voter, and the target is reached."""
    rng = random.Random(seed)
    nodes = [f"n{i}" for i in range(1, 7)]
    voters = set(rng.sample(nodes, rng.randint(1, 4)))
    rest = [node for node in nodes if node not in voters]
    learners = {node for node in rest if rng.random() < 0.3}
    witnesses = {node for node in rest if node not in learners and rng.random() < 0.2}
    live = Membership(frozenset(voters), frozenset(learners), frozenset(witnesses))
    leader = rng.choice(sorted(voters))
    target_roles = {node: rng.choice(ROLES) for node in nodes}
    target_roles[rng.choice(nodes)] = "voter"
    target = targets(**{node: role for node, role in target_roles.items() if role is not None})
    for _ in range(30):
        steps = plan(live, leader, target)
        if not steps:
            break
        step = steps[0]
        if step.action != TRANSFER:
            assert step.node != leader or step.change.raft_kind not in (
                ChangeKind.REMOVE_NODE,
                ChangeKind.DEMOTE_VOTER,
            ), f"{step} while {leader} leads"
        live, leader = carry_out(live, leader, step, rng)
        assert live.voters, "no voter left"
        assert leader in live.voters
    else:
        pytest.fail(f"no end after 30 steps: at {live}, next {plan(live, leader, target)}")
    assert live.voters == {n for n, r in target_roles.items() if r == "voter"}
    assert live.learners == {n for n, r in target_roles.items() if r == "learner"}
    assert live.witnesses == {n for n, r in target_roles.items() if r == "witness"}
