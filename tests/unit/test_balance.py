"""The balancer core (caddy.balance): every strategy, slow start, outlier ejection, the panic
threshold, consistent hashing and the statistics."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from caddy.balance import Backend, Balancer, BalanceSettings, EjectionSettings
from caddy.balance.hashing import rendezvous
from caddy.balance.histogram import LatencyHistogram

NO_SLOW_START = BalanceSettings(slow_start_s=0)


def balancer(strategy: str, weights=(1, 1, 1), settings=NO_SLOW_START, seed=1) -> Balancer:
    b = Balancer(strategy, settings, random.Random(seed))
    b.update(backends(weights), now=0.0)
    return b


def backends(weights) -> list[Backend]:
    return [Backend(f"b{i}", f"tcp://127.0.0.1:{9000 + i}", w) for i, w in enumerate(weights)]


def picks(b: Balancer, count: int, now: float = 1.0, key=None) -> list[str]:
    return [b.pick(now, key).id for _ in range(count)]


def test_round_robin_takes_each_in_turn():
    assert picks(balancer("round_robin"), 7) == ["b0", "b1", "b2", "b0", "b1", "b2", "b0"]


def test_smooth_weighted_round_robin_spreads_the_heavy_one():
    """nginx's sequence for weights 5, 1, 1."""
    assert picks(balancer("weighted", (5, 1, 1)), 7) == ["b0", "b0", "b1", "b0", "b2", "b0", "b0"]


def test_least_connections_goes_to_the_fewest_in_flight_per_weight():
    b = balancer("least_connections", (1, 2, 1))
    for backend, count in (("b0", 2), ("b1", 3), ("b2", 1)):
        for _ in range(count):
            b.started(backend)
    assert b.pick(1.0).id == "b2"  # 1/1 < 3/2 < 2/1
    b.started("b2")
    b.started("b2")
    assert b.pick(1.0).id == "b1"  # 3/2 < 2/1 < 3/1
    b.finished("b0", 1.0, ok=True)
    b.finished("b0", 1.0, ok=True)
    assert b.pick(1.0).id == "b0"  # 0


def test_least_connections_breaks_ties_in_turn():
    assert picks(balancer("least_connections"), 4) == ["b0", "b1", "b2", "b0"]


@pytest.mark.parametrize("strategy", ["random", "p2c"])
def test_random_strategies_follow_the_weights(strategy):
    """Seeded; shares within 2 percentage points of the weights over 30k picks (p2c with
    nothing in flight: the first of the two drawn, drawn by weight)."""
    b = balancer(strategy, (1, 2, 3), seed=7)
    counts = Counter(picks(b, 30_000))
    for backend, weight in (("b0", 1), ("b1", 2), ("b2", 3)):
        assert abs(counts[backend] / 30_000 - weight / 6) < 0.02, (backend, counts)


def test_p2c_sends_new_work_to_the_less_loaded():
    b = balancer("p2c", (1, 1), seed=3)
    for _ in range(10):
        b.started("b0")
    assert set(picks(b, 50)) == {"b1"}


def test_ip_hash_keeps_a_key_on_its_backend():
    b = balancer("ip_hash", (1,) * 5)
    for key in ("10.0.0.1", "10.0.0.2", "192.168.1.77"):
        assert len(set(picks(b, 20, key=key))) == 1
    assert picks(balancer("ip_hash"), 3) == ["b0", "b1", "b2"]  # no key: in turn


def test_consistent_hashing_moves_only_the_keys_of_a_removed_backend_and_restores_them():
    ten = [(f"b{i}", 1.0) for i in range(10)]
    keys = [f"client-{i}" for i in range(100_000)]
    before = {key: rendezvous(key, ten) for key in keys}
    nine = [pair for pair in ten if pair[0] != "b3"]
    after = {key: rendezvous(key, nine) for key in keys}
    moved = sum(before[key] != after[key] for key in keys)
    assert moved == sum(owner == "b3" for owner in before.values())  # only b3's keys
    assert moved / len(keys) <= 0.11
    assert {key: rendezvous(key, ten) for key in keys} == before  # b3 back: its keys back


def test_weighted_rendezvous_follows_the_weights():
    counts = Counter(rendezvous(f"k{i}", [("a", 1.0), ("b", 3.0)]) for i in range(40_000))
    assert abs(counts["b"] / 40_000 - 0.75) < 0.01


def test_unhealthy_and_draining_backends_are_skipped():
    b = balancer("round_robin", (1,) * 4)
    b.set_healthy("b1", False, 1.0)
    b.set_draining("b2", True, 1.0)
    assert set(picks(b, 8)) == {"b0", "b3"}
    assert [row["state"] for row in b.stats(1.0)] == ["healthy", "unhealthy", "draining", "healthy"]


def test_a_pick_is_none_only_when_every_backend_drains():
    b = balancer("round_robin", (1, 1))
    b.set_healthy("b0", False, 1.0)
    b.set_healthy("b1", False, 1.0)
    assert b.pick(1.0) is not None  # panic: better an unhealthy backend than none
    b.set_draining("b0", True, 1.0)
    b.set_draining("b1", True, 1.0)
    assert b.pick(1.0) is None


def test_the_panic_threshold_spreads_over_all_when_too_few_are_healthy():
    b = balancer(
        "round_robin", (1,) * 4, BalanceSettings(slow_start_s=0, panic_threshold_percent=50)
    )
    b.set_healthy("b0", False, 1.0)
    assert not b.panicking(1.0) and set(picks(b, 6)) == {"b1", "b2", "b3"}
    b.set_healthy("b1", False, 1.0)
    assert not b.panicking(1.0)  # 2 of 4 healthy: 50 % is not below 50 %
    b.set_healthy("b2", False, 1.0)
    assert b.panicking(1.0) and set(picks(b, 8)) == {"b0", "b1", "b2", "b3"}
    b.set_draining("b3", True, 1.0)
    assert set(picks(b, 6)) == {"b0", "b1", "b2"}  # never a draining one, even in panic


def test_slow_start_ramps_a_recovered_backend_from_a_tenth_to_its_weight():
    b = balancer("weighted", (1, 1), BalanceSettings(slow_start_s=10, panic_threshold_percent=0))
    b.set_healthy("b1", False, 0.0)
    b.set_healthy("b1", True, 100.0)
    weight = lambda now: next(r["weight_now"] for r in b.stats(now) if r["id"] == "b1")  # noqa: E731
    assert weight(100.0) == 0.1
    assert weight(105.0) == 0.5
    assert weight(110.0) == 1.0
    early = Counter(picks(b, 1100, now=100.5))
    assert early["b1"] == 100  # weight 0.1 against 1: one pick in 11


def test_backends_added_later_start_slowly_the_first_set_does_not():
    b = Balancer("weighted", BalanceSettings(slow_start_s=10), random.Random(1))
    b.update(backends((1, 1)), now=0.0)
    b.update(backends((1, 1, 1)), now=50.0)
    assert [row["weight_now"] for row in b.stats(50.0)] == [1.0, 1.0, 0.1]


def test_consecutive_failures_eject_for_longer_each_time_up_to_the_cap():
    ejection = EjectionSettings(
        consecutive_failures=3, base_ejection_s=10, max_ejection_s=25, max_ejection_percent=50
    )
    b = balancer("round_robin", (1,) * 4, BalanceSettings(slow_start_s=0, ejection=ejection))
    for _ in range(2):
        b.report("b0", False, 0.0)
    b.report("b0", True, 0.0)  # a success breaks the run
    for _ in range(2):
        b.report("b0", False, 0.0)
    assert b.state_of("b0", 0.0) == "healthy"
    b.report("b0", False, 0.0)
    assert b.state_of("b0", 0.0) == "ejected" and "b0" not in picks(b, 6, now=1.0)
    assert b.state_of("b0", 10.0) == "healthy"  # ejected 10 s
    for _ in range(3):
        b.report("b0", False, 11.0)
    assert b.state_of("b0", 30.9) == "ejected" and b.state_of("b0", 31.0) == "healthy"  # 20 s
    for _ in range(3):
        b.report("b0", False, 32.0)
    assert b.state_of("b0", 56.9) == "ejected" and b.state_of("b0", 57.0) == "healthy"  # cap 25
    for _ in range(3):
        b.report("b0", False, 57.0 + 25.0)  # in rotation for max_ejection_s: counted afresh
    assert b.state_of("b0", 91.9) == "ejected" and b.state_of("b0", 92.0) == "healthy"


def test_at_most_the_set_share_is_ejected_at_once():
    ejection = EjectionSettings(consecutive_failures=1, max_ejection_percent=25)
    b = balancer("round_robin", (1,) * 8, BalanceSettings(slow_start_s=0, ejection=ejection))
    for backend in ("b0", "b1", "b2", "b3"):
        b.report(backend, False, 0.0)
    states = [row["state"] for row in b.stats(0.0)]
    assert states.count("ejected") == 2  # 25 % of 8
    lone = balancer("round_robin", (1, 1), BalanceSettings(slow_start_s=0, ejection=ejection))
    lone.report("b0", False, 0.0)
    assert lone.state_of("b0", 0.0) == "ejected"  # at least one may always go


def test_statistics_count_what_happened():
    b = balancer("round_robin", (1, 1))
    for _ in range(4):
        chosen = b.pick(1.0).id
        b.started(chosen)
    b.finished("b0", 2.0, ok=True, latency_ms=1.0, bytes_in=10, bytes_out=20)
    b.finished("b0", 2.0, ok=False, latency_ms=100.0)
    row = b.stats(2.0)[0]
    assert {
        k: row[k] for k in ("picks", "active", "total", "failures", "bytes_in", "bytes_out")
    } == {
        "picks": 2,
        "active": 0,
        "total": 2,
        "failures": 1,
        "bytes_in": 10,
        "bytes_out": 20,
    }
    assert 1.0 <= row["latency_p50_ms"] <= 1.2 and 100.0 <= row["latency_p99_ms"] <= 120.0


def test_the_histogram_is_bounded_and_its_quantiles_are_within_a_bucket():
    histogram = LatencyHistogram()
    for ms in range(1, 1001):
        histogram.record(float(ms))
    assert 500 <= histogram.quantile(0.5) <= 600
    assert 990 <= histogram.quantile(0.99) <= 1200
    histogram.record(1e12)  # beyond the last bound: counted in the last bucket
    assert histogram.quantile(1.0) > 1e5
    assert LatencyHistogram().quantile(0.5) is None


def test_an_unknown_strategy_names_the_known_ones():
    with pytest.raises(ValueError, match="round_robin, least_connections, weighted"):
        Balancer("fastest", NO_SLOW_START, random.Random())


def test_a_retry_excludes_the_backend_that_just_failed():
    b = balancer("ip_hash", (1,) * 4)
    first = b.pick(1.0, "10.0.0.9").id
    second = b.pick(1.0, "10.0.0.9", exclude=frozenset({first})).id
    assert second != first
    assert b.pick(1.0, "10.0.0.9", exclude=frozenset({first})).id == second  # consistent
    assert b.pick(1.0, exclude=frozenset({"b0", "b1", "b2", "b3"})) is None
