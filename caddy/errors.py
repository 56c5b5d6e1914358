"""The error hierarchy every CADDY failure derives from.

Users catch `CaddyError`; the client raises `Timeout` and `Unavailable`.
"""


class CaddyError(Exception):
    """Base of every error CADDY raises on purpose."""


class Timeout(CaddyError):
    """The deadline passed; the outcome of a write is unknown."""


class Unavailable(CaddyError):
    """No node could be reached at all."""


class WireError(CaddyError):
    """A frame that is not a valid CADDY message (malformed, oversized, foreign, unknown kind)."""


class NotLeader(CaddyError):
    """This node is not the leader; `leader_hint` names the leader when known."""

    def __init__(self, leader_hint: str | None = None) -> None:
        super().__init__(f"not the leader (leader: {leader_hint or 'unknown'})")
        self.leader_hint = leader_hint
