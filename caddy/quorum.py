"""Quorum math and this node's view of it: who votes, who can be reached, whether the reachable
nodes can make progress, and the transitions a node reports (quorum lost and regained, partition
detected and healed). Pure: the FencingActor feeds it Raft contacts, gossip states and the clock.

Roles (`caddy.raft.types.Membership`): data voters vote, lead and serve; witnesses vote and keep
the log but never lead or serve; learners do not vote. So progress needs a majority of the
voting members (voters and witnesses) *and* a data voter among them, for a witness cannot lead
(TiKV's witness design: a witness counts for the quorum only beside a data voter).

During a membership change a node may be unsure which configuration is in force (the one the log
committed or the one it appended after it, Raft dissertation 4.1): `QuorumRule` takes every
configuration that may be and asks for a majority in each, as joint consensus does (4.3).

Reachability: a peer is reachable when this node heard from it directly within the window (the
transport's link heartbeats run between every pair of nodes, and Raft traffic rides the same
links), unless gossip says it left. Gossip's alive is not enough on its own: SWIM's indirect
probes call a member alive that only others can reach, and a quorum is of nodes this one can
exchange messages with. Gossip's suspect or dead loses to fresh contact (a rumour against what
this node sees).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from caddy.raft.types import Membership


@dataclass(frozen=True, slots=True)
class VotingConfig:
    """One configuration's members by role."""

    voters: frozenset[str]
    witnesses: frozenset[str] = frozenset()
    learners: frozenset[str] = frozenset()

    @classmethod
    def of(cls, membership: Membership) -> VotingConfig:
        return cls(membership.voters, membership.witnesses, membership.learners)

    @property
    def voting(self) -> frozenset[str]:
        return self.voters | self.witnesses

    @property
    def needed(self) -> int:
        """Votes that make a majority (0 for a configuration with no voting member)."""
        return len(self.voting) // 2 + 1 if self.voting else 0

    @property
    def tolerated_failures(self) -> int:
        """Members that may fail, any of them, with the rest still able to make progress: a
        majority must stay and a data voter must be among it."""
        if not self.voters:
            return 0
        return max(0, min(len(self.voting) - self.needed, len(self.voters) - 1))

    def can_progress(self, reachable: Iterable[str]) -> bool:
        """A majority of the voting members, a data voter among them, is in `reachable`."""
        present = self.voting.intersection(reachable)
        return bool(self.voters & present) and len(present) >= self.needed > 0


@dataclass(frozen=True, slots=True)
class QuorumRule:
    """The configurations that may be in force; progress needs each of them."""

    configs: tuple[VotingConfig, ...]

    @classmethod
    def of(cls, *memberships: Membership) -> QuorumRule:
        unique = dict.fromkeys(VotingConfig.of(m) for m in memberships)  # ordered, no repeats
        return cls(tuple(unique))

    @property
    def voters(self) -> frozenset[str]:
        return frozenset().union(*(c.voters for c in self.configs))

    @property
    def witnesses(self) -> frozenset[str]:
        return frozenset().union(*(c.witnesses for c in self.configs))

    @property
    def members(self) -> frozenset[str]:
        return frozenset().union(*(c.voting | c.learners for c in self.configs))

    @property
    def needed(self) -> int:
        """Votes needed in the strictest configuration."""
        return max((c.needed for c in self.configs), default=0)

    @property
    def tolerated_failures(self) -> int:
        return min((c.tolerated_failures for c in self.configs), default=0)

    def can_progress(self, reachable: Iterable[str]) -> bool:
        present = frozenset(reachable)
        return bool(self.configs) and all(c.can_progress(present) for c in self.configs)


def contact_window_ms(election_timeout_max_ms: int, link_heartbeat_ms: int) -> int:
    """How long a peer's last frame counts as contact: an election timeout (what CheckQuorum
    gives a leader), and at least three link heartbeats (the transport's heartbeat runs between
    every pair of nodes, and is all a follower hears from another follower when no gossip comes;
    two missed in a row on a loaded machine must not count as a partition). The defaults
    (300 ms, 100 ms) make both 300 ms, so a node cut off knows it within about 350 ms."""
    return max(election_timeout_max_ms, 3 * link_heartbeat_ms)


@dataclass
class Reachability:
    """Which members this node can reach: direct contact within the window, and not departed."""

    node_id: str
    window_s: float  # contact older than this is stale
    _heard: dict[str, float] = field(default_factory=dict)
    _left: set[str] = field(default_factory=set)

    def heard_from(self, peer: str, when: float) -> None:
        self._heard[peer] = max(when, self._heard.get(peer, when))

    def gossip_state(self, peer: str, state: str) -> None:
        """`state`: alive, suspect, dead or left (`caddy.swim.MemberState` values)."""
        if state == "left":
            self._left.add(peer)
        else:
            self._left.discard(peer)

    def reachable(self, members: Iterable[str], now: float) -> frozenset[str]:
        """The members of `members` reachable at `now`; this node always is."""
        horizon = now - self.window_s
        heard, left = self._heard, self._left
        return frozenset(
            member
            for member in members
            if member == self.node_id
            or (member not in left and heard.get(member, horizon - 1.0) >= horizon)
        )


@dataclass(frozen=True, slots=True)
class QuorumState:
    """The `quorum` status section's content (CONTRACT 5); `since` is when `has_quorum` last
    changed, on the caller's clock."""

    has_quorum: bool
    voters: tuple[str, ...]
    witnesses: tuple[str, ...]
    reachable: tuple[str, ...]
    needed: int
    since: float

    def to_status(self) -> dict[str, object]:
        return {
            "has_quorum": self.has_quorum,
            "voters": list(self.voters),
            "witnesses": list(self.witnesses),
            "reachable": list(self.reachable),
            "needed": self.needed,
            "since": self.since,
        }


QUORUM_LOST = "quorum.lost"
QUORUM_REGAINED = "quorum.regained"
PARTITION_DETECTED = "partition.detected"  # told again when the sides change
PARTITION_HEALED = "partition.healed"


class Transition(NamedTuple):
    """A change of this node's quorum view: `kind` (the node event's kind), the members it can
    reach and those of the configuration it cannot, as it sees them."""

    kind: str
    reachable: tuple[str, ...]
    unreachable: tuple[str, ...] = ()


class QuorumTracker:
    """This node's quorum state over time: `update` with what is reachable now, get the
    transitions since the last update. Starts as having quorum with every member reachable (a
    node starts believing its topology), so the first update reports what is really missing."""

    def __init__(self, rule: QuorumRule, now: float) -> None:
        self.rule = rule
        self.state = _state(rule, True, tuple(sorted(rule.members)), now)
        self._theirs: tuple[str, ...] = ()

    def update(
        self, reachable: Iterable[str], now: float, rule: QuorumRule | None = None
    ) -> list[Transition]:
        """Judge `reachable` at `now`, against `rule` when the configuration changed."""
        if rule is not None:
            self.rule = rule
        rule = self.rule
        members = rule.members
        present = frozenset(reachable) & members
        ours = tuple(sorted(present))
        has_quorum = rule.can_progress(present)
        old = self.state
        since = old.since if has_quorum == old.has_quorum else now
        self.state = _state(rule, has_quorum, ours, since)
        theirs = tuple(sorted(members - present))
        transitions: list[Transition] = []
        if old.has_quorum != has_quorum:
            transitions.append(
                Transition(QUORUM_REGAINED if has_quorum else QUORUM_LOST, ours, theirs)
            )
        if theirs != self._theirs:
            kind = PARTITION_DETECTED if theirs else PARTITION_HEALED
            transitions.append(Transition(kind, ours, theirs))
            self._theirs = theirs
        return transitions


def _state(
    rule: QuorumRule, has_quorum: bool, reachable: tuple[str, ...], since: float
) -> QuorumState:
    return QuorumState(
        has_quorum,
        tuple(sorted(rule.voters)),
        tuple(sorted(rule.witnesses)),
        reachable,
        rule.needed,
        since,
    )
