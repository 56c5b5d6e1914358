"""The node's status board: each actor posts a frozen snapshot of its state; anyone reads it.

Posting replaces a reference (atomic in CPython), so status queries never ask an actor anything.
Each subsystem adds its part of the status document with one `contribute` call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Section = Callable[[], Mapping[str, Any]]


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
    last_step_down: str | None = None  # why this node last stopped leading (None: never did)
    membership_change_pending: bool = False  # appended, not yet committed


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
    # name -> (section, merged into the top level of the document rather than under its name)
    _sections: dict[str, tuple[Section, bool]] = field(default_factory=dict)

    def contribute(self, name: str, section: Section, *, top_level: bool = False) -> None:
        """Add `section()` to the status document as `name`, or merge its keys into the top
        level (for the fields clients read there: state, term, leader, ...). `section` is
        called on the thread that asks for the status: it must only read posted snapshots."""
        if name in self._sections:
            raise ValueError(f"status section {name!r} is already contributed")
        self._sections = {**self._sections, name: (section, top_level)}

    def section(self, name: str) -> dict[str, Any] | None:
        """One contributed section as it is now (None when nobody contributes it)."""
        found = self._sections.get(name)
        return dict(found[0]()) if found is not None else None

    def document(self) -> dict[str, Any]:
        """Every contributed section, in the order they were contributed; a section that
        raises shows as `{"error": ...}` under its name instead of failing the whole document."""
        document: dict[str, Any] = {}
        for name, (section, top_level) in self._sections.items():
            try:
                part = dict(section())
            except Exception as error:
                log.exception("status section %s failed", name)
                document[name] = {"error": f"{type(error).__name__}: {error}"}
                continue
            if top_level:
                document.update(part)
            else:
                document[name] = part
        return document

    def count_body_drop(self, owner: str) -> None:
        """Called only from `owner`'s own thread, so each key has a single writer. By reason
        only: a subsystem with the transport at hand calls `Transport.count_body_drop`, which
        also counts by peer and logs (rate-limited), as the Raft and gossip actors do."""
        self.body_drops[owner] = self.body_drops.get(owner, 0) + 1
