"""SWIM timings in ticks, derived from the topology's gossip settings and the node's tick length.

The core counts ticks only; this is the one place where milliseconds become ticks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from caddy.errors import CaddyError
from caddy.ticks import ms_to_ticks

DEFAULT_MAX_PIGGYBACK_BYTES = 1400  # one Ethernet-sized datagram's worth of gossip per message


class SwimError(CaddyError, ValueError):
    """A local misuse of the SWIM core: invalid timings or oversized metadata."""


@dataclass(frozen=True, slots=True)
class SwimTimings:
    """Every knob of the protocol, durations in ticks. `lifeguard=False` gives classic SWIM."""

    tick_ms: int
    probe_interval_ticks: int
    probe_timeout_ticks: int
    gossip_interval_ticks: int
    push_pull_interval_ticks: int
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 4
    gossip_nodes: int = 3
    awareness_max_multiplier: int = 8
    max_piggyback_bytes: int = DEFAULT_MAX_PIGGYBACK_BYTES
    lifeguard: bool = True

    def __post_init__(self) -> None:
        positive = (
            "tick_ms",
            "probe_interval_ticks",
            "probe_timeout_ticks",
            "gossip_interval_ticks",
            "push_pull_interval_ticks",
            "suspicion_mult",
            "suspicion_max_timeout_mult",
            "retransmit_mult",
            "awareness_max_multiplier",
            "max_piggyback_bytes",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise SwimError(f"swim timings: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("indirect_checks", "gossip_nodes"):
            if getattr(self, name) < 0:
                raise SwimError(f"swim timings: {name} must be >= 0, got {getattr(self, name)}")
        if self.probe_timeout_ticks >= self.probe_interval_ticks:
            raise SwimError("swim timings: the probe timeout must be shorter than the interval")

    @classmethod
    def from_settings(cls, settings: Any, tick_ms: int, **overrides: Any) -> SwimTimings:
        """Reads the gossip settings by attribute name (duck-typed), milliseconds -> ticks.

        `lifeguard` and `max_piggyback_bytes` are read when the settings have them; `overrides`
        (any field of this class) take precedence over everything.
        """
        values: dict[str, Any] = {
            "tick_ms": tick_ms,
            "probe_interval_ticks": ms_to_ticks(settings.probe_interval_ms, tick_ms),
            "probe_timeout_ticks": ms_to_ticks(settings.probe_timeout_ms, tick_ms),
            "gossip_interval_ticks": ms_to_ticks(settings.gossip_interval_ms, tick_ms),
            "push_pull_interval_ticks": ms_to_ticks(settings.push_pull_interval_ms, tick_ms),
            "indirect_checks": settings.indirect_checks,
            "suspicion_mult": settings.suspicion_mult,
            "suspicion_max_timeout_mult": settings.suspicion_max_timeout_mult,
            "retransmit_mult": settings.retransmit_mult,
            "gossip_nodes": settings.gossip_nodes,
            "awareness_max_multiplier": settings.awareness_max_multiplier,
            "max_piggyback_bytes": getattr(
                settings, "max_piggyback_bytes", DEFAULT_MAX_PIGGYBACK_BYTES
            ),
            "lifeguard": getattr(settings, "lifeguard", True),
        }
        values.update(overrides)
        return cls(**values)
