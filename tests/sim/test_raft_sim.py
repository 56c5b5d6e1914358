"""Seeded fault simulation of the Raft core: safety after every step, liveness after healing.

`SEEDS=N` runs seeds 0..N-1 (default 500; `SEED_START` shifts them); `SEED=s` replays one seed.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from caddy.raft.driver import RaftDriver
from caddy.raft.memory_storage import MemoryLogStorage
from tests.sim.raft_sim import (
    SCENARIOS,
    InvariantViolation,
    SimNode,
    SimSnapshotWriter,
    StateMachine,
    World,
    run_seed,
)


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
    assert any(world.witness_terms for world in worlds)  # a witness led, to hand over
    assert sum(world.snapshots_installed for world in worlds) > 0
    # The deferred own-snapshot path, with the moments that matter in it.
    assert sum(world.snapshots_taken for world in worlds) > 0
    assert sum(world.interrupted_snapshot_writes for world in worlds) > 0
    assert sum(world.own_writes_overtaken for world in worlds) > 0
    assert sum(world.snapshots_asked_while_writing for world in worlds) > 0


# Deliberate bugs in the node's deferred own-snapshot path (driver, storage, the node's view,
# the writer): the seeds must catch each, by an invariant rather than by a broken patch.


def _cut_before_the_file(monkeypatch):
    take = RaftDriver.take_snapshot

    def take_snapshot(self):
        take(self)
        if self.snapshot_writing is not None:
            self.storage.cut_log_to_snapshot(self.snapshot_writing)

    monkeypatch.setattr(RaftDriver, "take_snapshot", take_snapshot)


def _compact_through_the_applied_index(monkeypatch):
    written = RaftDriver.snapshot_written

    def snapshot_written(self, meta, data):
        core = self.core
        if core.applied_index > meta.index > core.log.snapshot.index:
            meta = core.snapshot_meta(core.applied_index)  # forgets what was applied meanwhile
        written(self, meta, data)

    monkeypatch.setattr(RaftDriver, "snapshot_written", snapshot_written)


def _view_not_a_copy(monkeypatch):
    def snapshot_view(self):
        return lambda: StateMachine(self.sm.applied_index, self.sm.chain).snapshot()

    monkeypatch.setattr(SimNode, "snapshot_view", snapshot_view)


def _never_cut_the_stored_log(monkeypatch):
    monkeypatch.setattr(MemoryLogStorage, "cut_log_to_snapshot", lambda self, meta: None)


def _no_wait_for_the_own_write(monkeypatch):
    monkeypatch.setattr(SimSnapshotWriter, "finish", lambda self: None)


def _forget_the_wanted_snapshot(monkeypatch):
    written = RaftDriver.snapshot_written

    def snapshot_written(self, meta, data):
        self._snapshot_wanted = False
        written(self, meta, data)

    monkeypatch.setattr(RaftDriver, "snapshot_written", snapshot_written)


@pytest.mark.parametrize(
    "bug",
    [
        _cut_before_the_file,
        _compact_through_the_applied_index,
        _view_not_a_copy,
        _never_cut_the_stored_log,
        _no_wait_for_the_own_write,
        _forget_the_wanted_snapshot,
    ],
)
def test_a_bug_in_the_deferred_snapshot_path_is_caught_within_40_seeds(monkeypatch, bug):
    bug(monkeypatch)
    for seed in range(40):
        try:
            run_seed(seed)
        except InvariantViolation as error:
            assert isinstance(error.__cause__, InvariantViolation), error  # not a broken patch
            return
    pytest.fail(f"{bug.__name__} survived 40 seeds")
