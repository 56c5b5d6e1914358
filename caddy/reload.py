"""Settings reload (SIGHUP, `caddy-ctl reload NODE`; CONTRACT 8): which settings of a re-read
topology file a running node takes at once, and which need a restart.

Live: the log level, the Raft timings (heartbeat and election timeouts) and snapshot
thresholds, every `failover` setting (thresholds, checks, hooks, drain timeout) and the client
request timeout.
Everything else is reported as needing a restart: sockets, sizes, the gossip timings, the tick,
the data dir, a node's addresses. The membership is not a setting: a running cluster's lives in
its log and changes with `caddy-ctl reconfigure`, so node entries that differ are reported as
such and nothing else; so are a service's backends, which the replicated registry holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from caddy.config import ClusterConfig, parse_topology

LIVE_KEYS: dict[str, frozenset[str] | None] = {  # None: every key of the section
    "raft": frozenset(
        {
            "heartbeat_ms",
            "election_timeout_min_ms",
            "election_timeout_max_ms",
            "snapshot_threshold",
            "snapshot_threshold_bytes",
        }
    ),
    "failover": None,
    "transport": frozenset({"request_timeout_ms"}),
}
LIVE_TOP_KEYS = frozenset({"log_level"})
MEMBERSHIP_NOTE = "membership: changes with caddy-ctl reconfigure, not with a reload"
BACKENDS_NOTE = "{}: the registry in the log holds them: change them with caddy-ctl backend"


@dataclass(frozen=True, slots=True)
class Difference:
    """One key whose value the new file changes."""

    path: str  # "raft.election_timeout_min_ms"
    old: Any
    new: Any

    def describe(self) -> str:
        return f"{self.path} {self.old!r} -> {self.new!r}"


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """`config`: what the node runs with from now on (the old one with the new live values);
    `applied`: the live differences; `restart_needed`: the others; `notes`: advice lines."""

    config: ClusterConfig
    applied: tuple[Difference, ...]
    restart_needed: tuple[Difference, ...]
    notes: tuple[str, ...] = ()

    def document(self) -> dict[str, Any]:
        """What `caddy-ctl reload` shows."""
        return {
            "applied": [d.describe() for d in self.applied],
            "restart_needed": [d.describe() for d in self.restart_needed],
            "notes": list(self.notes),
        }


def plan_reload(current: ClusterConfig, new: ClusterConfig) -> ReloadPlan:
    """The plan for a node running `current` that re-read its file as `new` (both valid).
    Raises ConfigError when the live values of `new` do not fit the rest of `current` (an
    election timeout of fewer ticks than the running tick allows, say)."""
    applied, restart_needed, notes = [], [], []
    sections = {}
    for name, keys in LIVE_KEYS.items():
        old_section, new_section = getattr(current, name), getattr(new, name)
        live = {
            field.name: getattr(new_section, field.name)
            for field in dataclasses.fields(old_section)
            if keys is None or field.name in keys
        }
        sections[name] = dataclasses.replace(old_section, **live)
    merged = dataclasses.replace(
        current, **sections, **{key: getattr(new, key) for key in LIVE_TOP_KEYS}
    )
    for difference in _differences(current.to_dict(), new.to_dict()):
        if difference.path.startswith("nodes"):
            if MEMBERSHIP_NOTE not in notes:
                notes.append(MEMBERSHIP_NOTE)
        elif difference.path.startswith("services.") and difference.path.endswith(".backends"):
            notes.append(BACKENDS_NOTE.format(difference.path))
        elif _is_live(difference.path):
            applied.append(difference)
        else:
            restart_needed.append(difference)
    if applied:  # checked as a whole, with the running tick, sizes and the rest
        merged = parse_topology(merged.to_dict(), current.source)
    else:
        merged = current
    return ReloadPlan(merged, tuple(applied), tuple(restart_needed), tuple(notes))


def _is_live(path: str) -> bool:
    if path in LIVE_TOP_KEYS:
        return True
    section, _, key = path.partition(".")
    if section not in LIVE_KEYS:
        return False
    keys = LIVE_KEYS[section]
    return keys is None or key.split(".")[0].split("[")[0] in keys


def _differences(old: Any, new: Any, path: str = "") -> Iterator[Difference]:
    """Leaf by leaf, of two topology documents (`ClusterConfig.to_dict`)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys(), key=str):
            yield from _differences(
                old.get(key), new.get(key), f"{path}.{key}" if path else str(key)
            )
    elif old != new:
        yield Difference(path, old, new)
