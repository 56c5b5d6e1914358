"""The node's status board: each actor posts a frozen snapshot of its state; anyone reads it.

Posting replaces a reference (atomic in CPython), so status queries never ask an actor anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class RaftStatus:
    """What `caddy-ctl status` shows of Raft."""

    state: str = "follower"
    term: int = 0
    leader: str | None = None
    commit_index: int = 0
    applied_index: int = 0
    last_log_index: int = 0
    snapshot_index: int = 0
    pending_writes: int = 0
    # A leader's view of each follower: {"match": index, "state": probe|replicate|snapshot}.
    followers: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One member as this node's gossip sees it (`caddy-ctl members`)."""

    address: str
    state: str  # alive | suspect | dead | left
    incarnation: int
    metadata: dict[str, Any]


@dataclass(slots=True)
class StatusBoard:
    """Latest posted snapshot of each subsystem (None until it first posts)."""

    raft: RaftStatus | None = None
    members: dict[str, MemberStatus] | None = None
    members_version: int = 0  # changes with every change of the member list
    # Frames that passed the envelope check but whose body the owning actor refused, by actor.
    body_drops: dict[str, int] = field(default_factory=dict)

    def count_body_drop(self, owner: str) -> None:
        """Called only from `owner`'s own thread, so each key has a single writer."""
        self.body_drops[owner] = self.body_drops.get(owner, 0) + 1
