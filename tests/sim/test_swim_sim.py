"""SWIM membership in the deterministic simulator: detection, no false deaths, healing, rejoin,
dissemination in O(log n) periods, and Lifeguard against slow members.

CI runs small, seeded scenarios; SWIM_FULL=1 adds more seeds and the 200-node measurements.
"""

import math
import os

import pytest

from tests.sim.swim_sim import (
    FAST,
    EventKind,
    MemberState,
    SwimSim,
    crash_detection,
    dissemination_periods,
    idle_bytes_per_second,
    partition_and_heal,
    slow_members,
    started,
)

FULL = os.environ.get("SWIM_FULL") == "1"
SEEDS = range(1, 11) if FULL else range(1, 4)
GONE = {MemberState.DEAD}


@pytest.mark.parametrize("size", [5, 50])
@pytest.mark.parametrize("seed", SEEDS)
def test_every_live_node_declares_a_crashed_node_dead(size, seed):
    detection = crash_detection(size, seed, loss=0.01, max_seconds=60)
    assert detection.false_deaths == 0
    assert detection.first_s <= detection.all_s <= 60


@pytest.mark.parametrize("seed", range(1, 4) if FULL else [1])
def test_two_hundred_nodes_detect_a_crash(seed):
    detection = crash_detection(200, seed, max_seconds=60, tick_ms=20)
    assert detection.false_deaths == 0


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_moderate_loss_declares_no_live_node_dead(seed):
    sim = started(50, seed, loss=0.05)
    since = sim.now
    sim.run(600 if FULL else 120)
    assert sim.verdicts(EventKind.SUSPECT, since)  # the loss is felt...
    assert not sim.verdicts(EventKind.DEAD, since)  # ...but nobody is declared dead


@pytest.mark.parametrize(("size", "seed"), [(10, 1), (50, 2)] + ([(200, 3)] if FULL else []))
def test_membership_converges_after_a_partition_heals(size, seed):
    # Long enough that each side declares the other dead and every update about it expires.
    healed_after_s = partition_and_heal(size, seed, cut_seconds=150, tick_ms=20)
    assert healed_after_s <= 120  # within a couple of push-pull periods


def test_a_node_wrongly_declared_dead_rejoins_without_restart():
    sim = started(10, 4)
    victim = "n7"
    original = sim.nodes[victim]
    others = [name for name in sim.ids if name != victim]
    sim.partition([victim], others)
    assert sim.run_until(lambda: sim.all_see(victim, GONE, others), max_seconds=120)
    dead_at = sim.nodes["n1"].incarnation_of(victim)
    sim.heal()
    assert sim.run_until(sim.converged, max_seconds=120)
    assert sim.nodes[victim] is original and original.incarnation > dead_at


def test_a_restarted_node_rejoins_alive():
    sim = started(10, 5)
    sim.crash("n3")
    others = sim.live_ids()
    assert sim.run_until(lambda: sim.all_see("n3", GONE, others), max_seconds=120)
    dead_at = sim.nodes["n1"].incarnation_of("n3")
    sim.restart("n3")
    assert sim.run_until(sim.converged, max_seconds=60)
    assert sim.nodes["n3"].incarnation > dead_at


def test_a_graceful_leave_is_never_a_death():
    sim = started(20, 6)
    sim.nodes["n9"].leave()
    sim.run(1)
    sim.crash("n9")  # the process exits after its goodbye
    others = sim.live_ids()
    assert sim.run_until(lambda: sim.all_see("n9", {MemberState.LEFT}, others), max_seconds=10)
    sim.run(60)
    assert all(sim.nodes[o].state_of("n9") is MemberState.LEFT for o in others)
    assert not sim.verdicts(EventKind.DEAD)


@pytest.mark.parametrize("size", [5, 50] + ([200] if FULL else []))
def test_an_update_reaches_everyone_within_log_n_periods(size):
    for seed in SEEDS[:2]:
        assert dissemination_periods(size, seed) <= math.log2(size)


def test_lifeguard_keeps_a_slow_member_from_hurting_healthy_ones():
    seconds = 300 if FULL else 60
    with_lifeguard = slow_members(50, 1, seconds, lifeguard=True)
    classic = slow_members(50, 1, seconds, lifeguard=False)
    assert with_lifeguard.deaths_of_healthy == 0
    assert with_lifeguard.suspicions_of_healthy * 5 < classic.suspicions_of_healthy


def test_fast_profile_detects_within_a_few_seconds():
    detection = crash_detection(5, 1, settings=FAST)
    assert detection.all_s <= 5


def test_idle_traffic_is_small():
    assert idle_bytes_per_second(5, 1, seconds=60) <= 250


def test_a_seed_reproduces_exactly():
    def trace(seed):
        sim = SwimSim(8, seed, loss=0.1)
        sim.run(30)
        sim.crash("n2")
        sim.run(30)
        return [(o.tick, o.observer, o.event) for o in sim.observed]

    assert trace(11) == trace(11)
    assert trace(11) != trace(12)
