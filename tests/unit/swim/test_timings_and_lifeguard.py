"""Settings -> ticks, the health multiplier and the shrinking suspicion timeout."""

from types import SimpleNamespace

import pytest

from caddy.swim import SwimError, SwimTimings
from caddy.swim.lifeguard import Awareness, Suspicion, suspicion_bounds, suspicion_timeout
from tests.unit.swim.support import TIMINGS

LAN = SimpleNamespace(
    probe_interval_ms=1000,
    probe_timeout_ms=500,
    indirect_checks=3,
    suspicion_mult=4,
    suspicion_max_timeout_mult=6,
    retransmit_mult=4,
    gossip_interval_ms=200,
    gossip_nodes=3,
    push_pull_interval_ms=30000,
    awareness_max_multiplier=8,
)


def test_from_settings_turns_milliseconds_into_ticks_rounding_up():
    timings = SwimTimings.from_settings(LAN, tick_ms=30)
    assert timings.probe_interval_ticks == 34  # 1000 / 30 = 33.3 -> never fire early
    assert timings.probe_timeout_ticks == 17
    assert timings.gossip_interval_ticks == 7
    assert timings.push_pull_interval_ticks == 1000
    assert timings.lifeguard and timings.max_piggyback_bytes == 1400


def test_from_settings_reads_optional_flags_and_overrides():
    settings = SimpleNamespace(**vars(LAN), lifeguard=False)
    assert not SwimTimings.from_settings(settings, 10).lifeguard
    assert SwimTimings.from_settings(LAN, 10, max_piggyback_bytes=500).max_piggyback_bytes == 500


def test_a_timeout_not_shorter_than_the_interval_is_refused():
    with pytest.raises(SwimError):
        SwimTimings.from_settings(SimpleNamespace(**{**vars(LAN), "probe_timeout_ms": 1000}), 10)


def test_awareness_is_clamped_and_scales_timeouts():
    awareness = Awareness(multiplier_cap=8)
    awareness.apply(-1)
    assert awareness.score == 0 and awareness.scale(10) == 10
    awareness.apply(3)
    assert awareness.scale(10) == 40
    awareness.apply(100)
    assert awareness.score == 7


def test_suspicion_bounds_follow_memberlist():
    assert suspicion_bounds(TIMINGS, 5) == (40, 240)  # log10(5) < 1 -> factor 1
    assert suspicion_bounds(TIMINGS, 100) == (80, 480)


def test_suspicion_timeout_shrinks_from_max_to_min_with_confirmations():
    timeouts = [suspicion_timeout(40, 240, c, 3) for c in range(4)]
    assert timeouts[0] == 240 and timeouts[-1] == 40
    assert timeouts == sorted(timeouts, reverse=True) and len(set(timeouts)) == 4
    assert timeouts[1] == 140  # 240 - 200 * log(2) / log(4)
    assert suspicion_timeout(40, 240, 0, 0) == 40  # nobody to confirm: classic SWIM


def test_only_new_independent_confirmations_count():
    suspicion = Suspicion(started=100, minimum=40, maximum=240, expected=2, origin="b")
    assert suspicion.deadline == 340
    assert not suspicion.confirm("b")  # the origin itself
    assert suspicion.confirm("c")
    assert not suspicion.confirm("c")
    assert suspicion.confirm("d")
    assert suspicion.deadline == 140
    assert not suspicion.confirm("e")  # enough already
