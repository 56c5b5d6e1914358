"""Milliseconds to logical ticks: the one rounding rule shared by every core's timings.

Cores count ticks of `tick_ms`; each subsystem's timings module converts its settings with this.
"""

from __future__ import annotations


def ms_to_ticks(milliseconds: int, tick_ms: int) -> int:
    """Whole ticks covering `milliseconds`, at least 1: rounds up, so that a timeout never fires
    earlier than configured."""
    if tick_ms < 1:
        raise ValueError(f"tick_ms must be >= 1, got {tick_ms}")
    return max(1, -(-milliseconds // tick_ms))
