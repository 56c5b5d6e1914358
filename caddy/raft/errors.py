"""Errors the Raft core raises when a request cannot be accepted in the node's current state.

`NotLeader` (from `caddy.errors`) covers "ask the leader"; these cover the rest.
"""

from caddy.errors import CaddyError


class RequestRejected(CaddyError):
    """A proposal, membership change or transfer that the leader cannot accept right now."""


class CommittedEntryConflict(CaddyError):
    """A leader sent entries that contradict committed ones: a faulty peer; never obeyed."""
