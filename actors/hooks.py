"""The topology's failover hooks (`failover.on_role_change`, `failover.on_event`): a user's
command run for each event, with the event as JSON on stdin and as `CADDY_EVENT_*` variables.

A hook runs on the bus's callback thread for the hook runner, never on a subsystem's: a hook
that hangs is killed at `hook_timeout_ms` and delays only the hooks after it. Every run that
fails or times out is logged and counted in the `failover` status section (`hooks`), so a
missed callback is seen (patroni#1418 lost them silently)."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from actors.shell import run_shell
from caddy.config import FailoverSettings
from caddy.events import NodeEvent

log = logging.getLogger(__name__)

ROLE_KINDS = frozenset({"leader.elected", "leader.lost"})
# What `on_event` is run for: failover and cluster events, not every gossip metadata update.
EVENT_KINDS = frozenset(
    {
        "leader.elected",
        "leader.lost",
        "member.suspect",
        "member.failed",
        "member.recovered",
        "leadership.moved",
        "learner.promoted",
        "voter.removed",
        "drain.started",
        "drain.finished",
        "quorum.lost",
        "quorum.regained",
        "partition.detected",
        "partition.healed",
    }
)


def event_environment(event: NodeEvent) -> dict[str, str]:
    """`CADDY_EVENT_KIND`, `CADDY_EVENT_NODE`, ... one variable per field (lists joined by
    commas, nested values as JSON)."""
    variables = {}
    for key, value in event.to_dict().items():
        if isinstance(value, list):
            shown = ",".join(str(item) for item in value)
        elif isinstance(value, dict):
            shown = json.dumps(value)
        else:
            shown = "" if value is None else str(value)
        variables[f"CADDY_EVENT_{key.upper()}"] = shown
    return variables


class HookRunner:
    """A bus callback: runs the configured hooks for each event they take."""

    def __init__(self, node_id: str, settings: FailoverSettings) -> None:
        self._node_id = node_id
        self._hooks = [
            (name, command, kinds)
            for name, command, kinds in (
                ("on_role_change", settings.on_role_change, ROLE_KINDS),
                ("on_event", settings.on_event, EVENT_KINDS),
            )
            if command
        ]
        self._timeout_s = settings.hook_timeout_ms / 1000
        self._lock = threading.Lock()
        self._runs = 0
        self._failures = 0
        self._last_failure: dict[str, Any] | None = None

    @property
    def configured(self) -> bool:
        return bool(self._hooks)

    def kinds(self) -> frozenset[str]:
        return frozenset().union(*(kinds for _, _, kinds in self._hooks))

    def __call__(self, event: NodeEvent) -> None:
        for name, command, kinds in self._hooks:
            if event.kind in kinds:
                problem = self._run(command, event)
                self._count(name, event, problem)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "runs": self._runs,
                "failures": self._failures,
                "last_failure": self._last_failure,
            }

    def _run(self, command: str, event: NodeEvent) -> str | None:
        payload = json.dumps(event.to_dict()).encode()
        env = {"CADDY_NODE": self._node_id, **event_environment(event)}
        return run_shell(command, env, self._timeout_s, stdin=payload)

    def _count(self, name: str, event: NodeEvent, problem: str | None) -> None:
        with self._lock:
            self._runs += 1
            if problem is None:
                return
            self._failures += 1
            self._last_failure = {
                "hook": name,
                "event": event.kind,
                "seq": event.seq,
                "problem": problem,
            }
        log.warning("node %s: hook %s for %s %s", self._node_id, name, event.kind, problem)
