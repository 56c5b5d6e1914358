"""Seeded fault simulation of the balancer core (`tests/sim/balance_sim.py`).

`BALANCE_SEEDS=N` runs seeds 0..N-1 (default 60); `SEED=s` replays one seed.
"""

import os
from collections import Counter

import pytest

from caddy.balance.strategies import STRATEGIES
from tests.sim.balance_sim import run_balance_seed


def chosen_seeds() -> list[int]:
    if "SEED" in os.environ:
        return [int(os.environ["SEED"])]
    return list(range(int(os.environ.get("BALANCE_SEEDS", "60"))))


@pytest.mark.parametrize("seed", chosen_seeds())
def test_seed_keeps_the_balancer_invariants(seed):
    run_balance_seed(seed)  # checked at every pick and after healing (balance_sim.py)


def test_the_seeds_exercise_every_strategy_ejections_and_panic():
    worlds = [run_balance_seed(seed) for seed in range(40)]
    strategies = Counter(world.strategy for world in worlds)
    assert set(strategies) == set(STRATEGIES), strategies
    assert sum("broken" in line for world in worlds for line in world.trace) > 20
    assert sum(world.picks for world in worlds) > 100_000
