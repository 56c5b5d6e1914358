"""Raft's milliseconds become ticks in one place: rounded up, in an order the core takes."""

from __future__ import annotations

import random

import pytest

from caddy.config import GossipSettings, RaftSettings
from caddy.errors import CaddyError
from caddy.raft.memory_storage import MemoryLogStorage
from caddy.raft.node import RaftNode
from caddy.raft.ready import StateRole
from caddy.raft.timings import RaftTimings, RaftTimingsError
from caddy.raft.types import Membership
from caddy.swim.timings import SwimTimings
from caddy.ticks import ms_to_ticks
from tests.unit.raft.cluster import Cluster


def timings(tick_ms: int = 10, **settings: int) -> RaftTimings:
    return RaftTimings.from_settings(RaftSettings(**settings), tick_ms)


def test_the_defaults_are_5_15_30_ticks_of_10_ms() -> None:
    assert timings().core_kwargs() == {
        "heartbeat_ticks": 5,
        "election_ticks_min": 15,
        "election_ticks_max": 30,
    }


@pytest.mark.parametrize(
    ("milliseconds", "tick_ms", "ticks"),
    [
        (155, 10, 16),
        (151, 10, 16),
        (150, 10, 15),
        (10, 10, 1),
        (300, 7, 43),
        (1, 10, 1),
        (0, 10, 1),
    ],
)
def test_milliseconds_round_up_to_whole_ticks_and_at_least_one(
    milliseconds: int, tick_ms: int, ticks: int
) -> None:
    assert ms_to_ticks(milliseconds, tick_ms) == ticks


def test_every_duration_rounds_up() -> None:
    rounded = timings(heartbeat_ms=41, election_timeout_min_ms=155, election_timeout_max_ms=291)
    assert rounded == RaftTimings(
        tick_ms=10, heartbeat_ticks=5, election_ticks_min=16, election_ticks_max=30
    )
    assert timings(tick_ms=100, heartbeat_ms=3, election_timeout_min_ms=150).heartbeat_ticks == 1


def test_swim_rounds_with_the_same_rule() -> None:
    gossip = GossipSettings(probe_interval_ms=805, probe_timeout_ms=1, push_pull_interval_ms=30_001)
    swim = SwimTimings.from_settings(gossip, 10)
    assert (swim.probe_interval_ticks, swim.probe_timeout_ticks) == (81, 1)
    assert swim.push_pull_interval_ticks == 3001


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        pytest.param(
            {"heartbeat_ms": 51, "election_timeout_min_ms": 55},
            ("raft.heartbeat_ms comes to 6 ticks", "raft.election_timeout_min_ms to 6"),
            id="heartbeat-meets-election-in-ticks",
        ),
        pytest.param(
            {"heartbeat_ms": 150, "election_timeout_min_ms": 150},
            ("raft.heartbeat_ms comes to 15 ticks", "raft.election_timeout_min_ms to 15"),
            id="heartbeat-equals-election",
        ),
        pytest.param(
            {"election_timeout_min_ms": 150, "election_timeout_max_ms": 140},
            ("raft.election_timeout_max_ms comes to 14 ticks", "raft.election_timeout_min_ms (15)"),
            id="max-below-min",
        ),
    ],
)
def test_an_order_the_core_refuses_is_refused_naming_the_settings(
    settings: dict[str, int], named: tuple[str, ...]
) -> None:
    with pytest.raises(RaftTimingsError) as caught:
        timings(**settings)
    assert all(part in str(caught.value) for part in named), str(caught.value)
    assert isinstance(caught.value, CaddyError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "ticks", [(0, 1, 2, 3), (10, 0, 2, 3)], ids=["tick-ms-zero", "heartbeat-zero"]
)
def test_tick_length_and_heartbeat_are_at_least_one(ticks: tuple[int, int, int, int]) -> None:
    with pytest.raises(RaftTimingsError, match="must be >= 1"):
        RaftTimings(*ticks)
    with pytest.raises(ValueError, match="tick_ms must be >= 1"):
        ms_to_ticks(100, 0)


def test_equal_election_bounds_are_allowed() -> None:
    same = timings(election_timeout_min_ms=200, election_timeout_max_ms=200)
    assert same.election_ticks_min == same.election_ticks_max == 20


def lone_voter(timings: RaftTimings) -> RaftNode:
    return RaftNode(
        "a",
        Membership(frozenset({"a"})),
        storage_state=MemoryLogStorage().load(),
        rng=random.Random(1),
        **timings.core_kwargs(),
    )


def test_an_election_timeout_never_fires_before_the_configured_time() -> None:
    # 155 ms at 10 ms ticks: 15 ticks (150 ms) would be early, so the core waits 16.
    node = lone_voter(timings(election_timeout_min_ms=155, election_timeout_max_ms=155))
    for _ in range(15):
        node.tick()
    assert node.state is StateRole.FOLLOWER
    node.tick()
    assert node.state is not StateRole.FOLLOWER


def test_retime_takes_new_election_timeouts_at_once():
    """A settings reload: a follower waits out the new, longer election timeout."""
    cluster = Cluster()
    cluster.elect("a")
    follower = cluster.nodes["b"]
    follower.retime(
        heartbeat_ticks=1,
        election_ticks_min=40,
        election_ticks_max=40,
        snapshot_threshold=100,
        snapshot_threshold_bytes=1 << 20,
    )
    assert follower.timings == {
        "heartbeat_ticks": 1,
        "election_ticks_min": 40,
        "election_ticks_max": 40,
    }
    cluster.isolate("b")
    cluster.tick(39, only=["b"])
    assert follower.state is StateRole.FOLLOWER
    cluster.tick(2, only=["b"])
    assert follower.state is not StateRole.FOLLOWER


def test_retime_refuses_timings_no_core_can_run():
    with pytest.raises(ValueError, match="heartbeat_ticks < election_ticks_min"):
        Cluster().nodes["a"].retime(
            heartbeat_ticks=5,
            election_ticks_min=5,
            election_ticks_max=9,
            snapshot_threshold=1,
            snapshot_threshold_bytes=1,
        )
