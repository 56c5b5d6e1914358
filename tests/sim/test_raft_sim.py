"""Seeded fault simulation of the Raft core: safety after every step, liveness after healing.

`SEEDS=N` runs seeds 0..N-1 (default 500; `SEED_START` shifts them); `SEED=s` replays one seed.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sim.raft_sim import SCENARIOS, World, run_seed


def chosen_seeds() -> list[int]:
    if "SEED" in os.environ:
        return [int(os.environ["SEED"])]
    start = int(os.environ.get("SEED_START", "0"))
    return list(range(start, start + int(os.environ.get("SEEDS", "500"))))


@pytest.mark.parametrize("seed", chosen_seeds())
def test_seed_keeps_raft_safe_and_live(seed):
    world = run_seed(seed)
    assert world.client.acked, f"seed {seed}: no write was ever acknowledged"


def fingerprint(world: World) -> tuple:
    return (
        world.now,
        world.network.sequence,
        tuple(world.trace),
        tuple(sorted(world.client.acked.items())),
        tuple(sorted(world.applied_chain.items())),
    )


def digest(world: World) -> str:
    return hashlib.sha256(repr(fingerprint(world)).encode()).hexdigest()


def test_a_seed_replays_exactly_also_in_another_process():
    assert fingerprint(run_seed(7)) == fingerprint(run_seed(7))
    script = "from tests.sim.test_raft_sim import digest, run_seed; print(digest(run_seed(7)))"
    root = Path(__file__).resolve().parents[2]
    other = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        env={**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == digest(run_seed(7))


def test_the_schedules_cover_every_shape_and_fault():
    worlds = [run_seed(seed) for seed in range(40)]
    assert {world.scenario for world in worlds} == set(SCENARIOS)
    events = " ".join(line for world in worlds for line in world.trace)
    for fault in (
        "crash",
        "inside ready",
        "restart",
        "split",
        "isolate",
        "isolate leader",
        "asymmetric",
        "flap",
        "bridge",
        "membership add_learner",
        "membership remove_node",
        "transfer",
    ):
        assert fault in events, fault
    assert sum(world.client.reads_served for world in worlds) > 0
    assert sum(world.snapshots_installed for world in worlds) > 0
