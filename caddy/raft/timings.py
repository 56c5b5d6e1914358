"""Raft timings in ticks, derived from the topology's raft settings and the node's tick length.

The core counts ticks only; this is the one place where Raft's milliseconds become ticks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from caddy.errors import CaddyError
from caddy.ticks import ms_to_ticks


class RaftTimingsError(CaddyError, ValueError):
    """Raft settings that, in whole ticks, break the order the core needs."""


@dataclass(frozen=True, slots=True)
class RaftTimings:
    """What `RaftNode` counts, in ticks of `tick_ms`; `core_kwargs()` hands it over."""

    tick_ms: int
    heartbeat_ticks: int
    election_ticks_min: int
    election_ticks_max: int

    def __post_init__(self) -> None:
        # The messages name the settings: the tick counts are theirs, rounded up.
        for name in ("tick_ms", "heartbeat_ticks"):
            if getattr(self, name) < 1:
                raise RaftTimingsError(
                    f"raft timings: {name} must be >= 1, got {getattr(self, name)}"
                )
        if self.heartbeat_ticks >= self.election_ticks_min:
            raise RaftTimingsError(
                f"at tick_ms {self.tick_ms}, raft.heartbeat_ms comes to {self.heartbeat_ticks} "
                f"ticks and raft.election_timeout_min_ms to {self.election_ticks_min}: the "
                "election timeout must be at least one tick longer than the heartbeat"
            )
        if self.election_ticks_max < self.election_ticks_min:
            raise RaftTimingsError(
                f"at tick_ms {self.tick_ms}, raft.election_timeout_max_ms comes to "
                f"{self.election_ticks_max} ticks, fewer than raft.election_timeout_min_ms "
                f"({self.election_ticks_min})"
            )

    @classmethod
    def from_settings(cls, settings: Any, tick_ms: int) -> RaftTimings:
        """Reads the raft settings by attribute name (duck-typed); each duration is rounded up,
        so no timeout fires earlier than configured."""
        return cls(
            tick_ms=tick_ms,
            heartbeat_ticks=ms_to_ticks(settings.heartbeat_ms, tick_ms),
            election_ticks_min=ms_to_ticks(settings.election_timeout_min_ms, tick_ms),
            election_ticks_max=ms_to_ticks(settings.election_timeout_max_ms, tick_ms),
        )

    def core_kwargs(self) -> dict[str, int]:
        """The keyword arguments of `RaftNode` these timings set."""
        return {
            "heartbeat_ticks": self.heartbeat_ticks,
            "election_ticks_min": self.election_ticks_min,
            "election_ticks_max": self.election_ticks_max,
        }
