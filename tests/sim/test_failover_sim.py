"""Seeded fault simulation of the failover policy over the Raft core (`tests/sim/failover_sim.py`).

`FAILOVER_SEEDS=N` runs seeds 0..N-1 (default 200); `SEED=s` replays one seed.
"""

import os

import pytest

from caddy.failover import PromoteLearner, RemoveVoter, TransferLeadership
from caddy.reconfig import Change
from tests.sim.failover_sim import run_failover_seed


def chosen_seeds() -> list[int]:
    if "SEED" in os.environ:
        return [int(os.environ["SEED"])]
    return list(range(int(os.environ.get("FAILOVER_SEEDS", "200"))))


@pytest.mark.parametrize("seed", chosen_seeds())
def test_seed_keeps_quorum_and_promotes_only_caught_up_learners(seed):
    run_failover_seed(seed)  # the invariants are checked at every action (failover_sim.py)


def test_the_seeds_exercise_every_action():
    worlds = [run_failover_seed(seed) for seed in range(80)]
    kinds = [type(action) for world in worlds for _, _, action in world.actions]
    assert kinds.count(TransferLeadership) > 5
    assert kinds.count(PromoteLearner) > 5
    assert kinds.count(RemoveVoter) > 5
    changes = [change for world in worlds for _, change, _, _ in world.operator_changes]
    assert len(set(changes)) == len(Change), f"operator changes seen: {set(changes)}"


def test_reconfiguring_seeds_carry_out_every_kind_of_step_and_reach_their_target():
    worlds = [run_failover_seed(seed) for seed in range(80)]
    targeted = [world for world in worlds if world.target is not None]
    assert len(targeted) > 15
    for world in targeted:  # settled, so the target held once the faults healed
        assert world.reached_target(world.any_leader().core.membership), world.seed
    actions = {action for world in targeted for _, action, _ in world.reconfigured}
    assert actions >= {"add_learner", "promote", "demote", "remove", "transfer"}, actions
