"""The error hierarchy every CADDY failure derives from.

Users catch `CaddyError`; the client raises `Timeout`, `Unavailable` (`NoQuorum` is one),
`ValueTooLarge`, `FencedOut` and `LockLost`.
"""


class CaddyError(Exception):
    """Base of every error CADDY raises on purpose."""


class Timeout(CaddyError):
    """The deadline passed; the outcome of a write is unknown."""


class Unavailable(CaddyError):
    """No node could be reached at all."""


class NoQuorum(Unavailable):
    """The nodes that answered cannot reach a quorum of voters: a write answered so was not
    applied (it was not appended anywhere)."""


class FencedOut(CaddyError):
    """A fenced write whose lock token no longer holds the lock (expired, released, or granted
    to someone else since): the write was not applied."""


class LockLost(CaddyError):
    """The lock is no longer held: its lease expired before a renewal reached the cluster, or
    the cluster granted it to another holder."""


class WireError(CaddyError):
    """A frame that is not a valid CADDY message (malformed, oversized, foreign, unknown kind)."""


class NotLeader(CaddyError):
    """This node is not the leader; `leader_hint` names the leader when known."""

    def __init__(self, leader_hint: str | None = None) -> None:
        super().__init__(f"not the leader (leader: {leader_hint or 'unknown'})")
        self.leader_hint = leader_hint


class ValueTooLarge(CaddyError):
    """A write (or a key) over the largest the cluster takes (`caddy.sizes.max_write_bytes`):
    refused before anything was proposed, so nothing was applied. `size` and `limit` in bytes."""

    def __init__(self, what: str, size: int, limit: int, max_message_bytes: int) -> None:
        super().__init__(
            f"{what} is {size} bytes, over the largest of {limit} bytes "
            f"(transport.max_message_bytes {max_message_bytes} less "
            f"{max_message_bytes - limit} bytes of framing)"
        )
        self.what = what
        self.size = size
        self.limit = limit
        self.max_message_bytes = max_message_bytes
