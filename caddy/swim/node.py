"""The SWIM + Lifeguard core of one node: probing, suspicion, refutation, dissemination and sync.

Sans-I/O: fed with tick(), step(), join(), leave(), update_metadata(); ready() drains its outputs.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from caddy.swim.broadcasts import BroadcastQueue, retransmit_limit
from caddy.swim.lifeguard import Awareness, Suspicion, suspicion_bounds
from caddy.swim.members import (
    LIVE_STATES,
    EventKind,
    Member,
    MemberEvent,
    MemberState,
    MemberView,
    MetaValue,
    metadata_problem,
)
from caddy.swim.messages import (
    Ack,
    Alive,
    Dead,
    Gossip,
    Left,
    MemberRecord,
    Message,
    Nack,
    Ping,
    PingReq,
    Suspect,
    Sync,
    Update,
    update_size,
)
from caddy.swim.timings import SwimError, SwimTimings

log = logging.getLogger(__name__)

_NEVER = 1 << 62
_SEQ_MASK = 0xFFFF  # sequence numbers wrap: only the few in flight must be distinct
_PUSH_PULL_BASE_MEMBERS = 32  # memberlist's push-pull period grows with log2(n / 32) beyond it
_NACK_SHARE = 0.8  # an intermediary nacks within this share of the requester's indirect window


@dataclass(frozen=True, slots=True)
class Ready:
    """What the driver must do now: send `messages` as (to_id, message), deliver `events`."""

    messages: tuple[tuple[str, Message], ...] = ()
    events: tuple[MemberEvent, ...] = ()


_NOTHING = Ready()


@dataclass(slots=True)
class _Probe:
    """The probe of the current protocol period."""

    target: str
    seq: int
    indirect_at: int  # when to ask intermediaries, unless acked before
    helpers: tuple[str, ...] = ()
    nackers: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Relay:
    """A ping sent on behalf of `requester` (ping-req), answered or nacked by `deadline`."""

    requester: str
    requester_seq: int
    target: str
    want_nack: bool
    deadline: int


class SwimNode:
    """One member's protocol state. Time is `tick()` calls; randomness is the given `rng` only."""

    def __init__(
        self,
        node_id: str,
        timings: SwimTimings,
        rng: random.Random,
        metadata: Mapping[str, MetaValue] | None = None,
        incarnation: int = 0,
    ) -> None:
        metadata = dict(metadata or {})
        _check_metadata(metadata)
        self.node_id = node_id
        self._timings = timings
        self._rng = rng
        self._now = 0
        self._me = Member(node_id, incarnation, MemberState.ALIVE, metadata)
        self._members: dict[str, Member] = {node_id: self._me}
        self._version = 0
        self._awareness = Awareness(timings.awareness_max_multiplier if timings.lifeguard else 1)
        self._broadcasts = BroadcastQueue()
        self._suspicions: dict[str, Suspicion] = {}
        self._probe_order: list[str] = []
        self._probe_cursor = 0
        self._urgent_probe: str | None = None  # a fresh suspect to check before the round goes on
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._seq = 0
        self._seeds: tuple[str, ...] = ()
        self._leaving = False
        self._next_probe_at = _NEVER
        self._next_gossip_at = _NEVER
        self._next_sync_at = _NEVER
        self._wake_at = _NEVER
        self._messages: list[tuple[str, Message]] = []
        self._events: list[MemberEvent] = []

    # ----- inputs -------------------------------------------------------------------------------

    def join(self, seeds: Iterable[str]) -> None:
        """Start the protocol: announce ourselves and sync full state with every seed."""
        self._seeds = tuple(seed for seed in seeds if seed != self.node_id)
        if self._next_probe_at == _NEVER:
            self._emit(EventKind.JOIN, self._me)
            self._broadcasts.push(self._alive_update())
            timings = self._timings
            self._next_probe_at = self._now + self._rng.randint(1, timings.probe_interval_ticks)
            self._next_gossip_at = self._now + self._rng.randint(1, timings.gossip_interval_ticks)
            self._next_sync_at = self._now + self._sync_delay()
            self._wake_by(min(self._next_probe_at, self._next_gossip_at, self._next_sync_at))
        for seed in self._seeds:
            self._send(seed, Sync(self._records(), reply_wanted=True))

    def leave(self) -> None:
        """Leave gracefully: announce `left` at once; keep ticking a few gossip intervals after."""
        if self._leaving:
            return
        self._leaving = True
        self._probe = None
        self._me.incarnation += 1
        self._set_state(self._me, MemberState.LEFT)
        self._emit(EventKind.LEAVE, self._me)
        self._broadcasts.push(Left(self.node_id, self._me.incarnation))
        self._gossip_round()

    @property
    def metadata(self) -> dict[str, MetaValue]:
        """This node's own metadata (a copy)."""
        return dict(self._me.metadata)

    def update_metadata(self, metadata: Mapping[str, MetaValue]) -> None:
        """Replace this node's metadata and spread it (raises SwimError when too large)."""
        metadata = dict(metadata)
        _check_metadata(metadata)
        self._me.metadata = metadata
        self._me.incarnation += 1
        self._version += 1
        self._emit(EventKind.UPDATE, self._me)
        self._broadcasts.push(self._alive_update())

    def tick(self) -> None:
        self._now += 1
        if self._now >= self._wake_at:
            self._run_due()

    def step(self, from_id: str, message: Message) -> None:
        """Handle one message from `from_id` (already validated by `from_wire`)."""
        if from_id == self.node_id:
            return
        if isinstance(message, Sync):
            self._on_sync(from_id, message)
            return
        corrections = [self._apply(update) for update in message.updates]
        if isinstance(message, Ping):
            ack = Ack(message.seq, self._piggyback(from_id))
            self._send(from_id, ack)
            corrections = [alive for alive in corrections if alive not in ack.updates]
        self._correct(from_id, corrections)
        if isinstance(message, Ack):
            self._on_ack(from_id, message.seq)
        elif isinstance(message, PingReq):
            self._on_ping_req(from_id, message)
        elif isinstance(message, Nack):
            probe = self._probe
            if probe is not None and probe.seq == message.seq and from_id in probe.helpers:
                probe.nackers.add(from_id)

    def ready(self) -> Ready:
        """Drain what must be sent and delivered since the last call."""
        if not self._messages and not self._events:
            return _NOTHING
        ready = Ready(tuple(self._messages), tuple(self._events))
        self._messages.clear()
        self._events.clear()
        return ready

    # ----- queries ------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Bumped on every change of the member list (state, incarnation or metadata)."""
        return self._version

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    @property
    def awareness(self) -> int:
        """Lifeguard's local health score: 0 is healthy; timeouts scale by (score + 1)."""
        return self._awareness.score

    @property
    def has_left(self) -> bool:
        return self._leaving

    def members(self) -> list[MemberView]:
        """Snapshot of the whole view, this node included, sorted by id."""
        return [self._members[name].view() for name in sorted(self._members)]

    def state_of(self, member: str) -> MemberState | None:
        record = self._members.get(member)
        return None if record is None else record.state

    def incarnation_of(self, member: str) -> int | None:
        record = self._members.get(member)
        return None if record is None else record.incarnation

    # ----- timers -------------------------------------------------------------------------------

    def _run_due(self) -> None:
        now = self._now
        probe = self._probe
        if probe is not None and probe.indirect_at <= now:
            self._ask_helpers(probe)
        for seq in [seq for seq, relay in self._relays.items() if relay.deadline <= now]:
            relay = self._relays.pop(seq)
            if relay.want_nack:
                self._send(
                    relay.requester, Nack(relay.requester_seq, self._piggyback(relay.requester))
                )
        expired = [
            name for name, suspicion in self._suspicions.items() if suspicion.deadline <= now
        ]
        for name in expired:
            self._suspicion_expired(name)
        if self._next_probe_at <= now:
            self._probe_round()
        if self._next_gossip_at <= now:
            self._next_gossip_at = now + self._timings.gossip_interval_ticks
            self._gossip_round()
        if self._next_sync_at <= now:
            self._sync_round()
        deadlines = [self._next_probe_at, self._next_gossip_at, self._next_sync_at]
        if self._probe is not None:
            deadlines.append(self._probe.indirect_at)
        deadlines.extend(relay.deadline for relay in self._relays.values())
        deadlines.extend(suspicion.deadline for suspicion in self._suspicions.values())
        self._wake_at = min(deadlines)

    def _wake_by(self, deadline: int) -> None:
        self._wake_at = min(self._wake_at, deadline)

    # ----- probing ------------------------------------------------------------------------------

    def _probe_round(self) -> None:
        """End the previous protocol period (verdict) and start the next probe."""
        self._finish_probe()
        if self._leaving:
            self._next_probe_at = _NEVER
            return
        timings = self._timings
        self._next_probe_at = self._now + self._awareness.scale(timings.probe_interval_ticks)
        target = self._next_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        indirect_at = self._now + self._awareness.scale(timings.probe_timeout_ticks)
        self._probe = _Probe(target, seq, indirect_at)
        self._send(target, Ping(seq, self._piggyback(target)))

    def _finish_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is None:  # acked in time (or nothing was probed)
            return
        if self._timings.lifeguard:
            expected = len(probe.helpers)
            self._awareness.apply(expected - len(probe.nackers) if expected else 1)
        target = self._members.get(probe.target)
        if target is not None and target.state in LIVE_STATES:
            log.debug("%s: no ack from %s", self.node_id, probe.target)
            self._apply(Suspect(probe.target, target.incarnation, self.node_id))

    def _next_probe_target(self) -> str | None:
        """Randomized round robin: each live member once per round, reshuffled every round."""
        urgent, self._urgent_probe = self._urgent_probe, None
        if urgent is not None and self.state_of(urgent) is MemberState.SUSPECT:
            return urgent
        for _ in range(len(self._probe_order) + 1):
            if self._probe_cursor >= len(self._probe_order):
                self._probe_order = [
                    name
                    for name, member in self._members.items()
                    if name != self.node_id and member.state in LIVE_STATES
                ]
                self._rng.shuffle(self._probe_order)
                self._probe_cursor = 0
                if not self._probe_order:
                    return None
            candidate = self._probe_order[self._probe_cursor]
            self._probe_cursor += 1
            member = self._members.get(candidate)
            if member is not None and member.state in LIVE_STATES:
                return candidate
        return None

    def _add_to_probe_order(self, name: str) -> None:
        """A new (or returning) member gets a random place in the current round."""
        if name in self._probe_order:
            return
        position = self._rng.randint(0, len(self._probe_order))
        self._probe_order.insert(position, name)
        if position < self._probe_cursor:
            self._probe_cursor += 1

    def _ask_helpers(self, probe: _Probe) -> None:
        """No direct ack in time: ask k alive members to probe the target for us."""
        probe.indirect_at = _NEVER
        candidates = [
            name
            for name, member in self._members.items()
            if member.state is MemberState.ALIVE and name not in (self.node_id, probe.target)
        ]
        helpers = self._rng.sample(candidates, min(self._timings.indirect_checks, len(candidates)))
        probe.helpers = tuple(helpers)
        for helper in helpers:
            updates = self._piggyback(helper)
            self._send(helper, PingReq(probe.seq, probe.target, self._timings.lifeguard, updates))

    def _on_ack(self, from_id: str, seq: int) -> None:
        probe = self._probe
        if (
            probe is not None
            and probe.seq == seq
            and (from_id == probe.target or from_id in probe.helpers)
        ):
            self._probe = None
            if self._timings.lifeguard:
                self._awareness.apply(-1)
            return
        relay = self._relays.get(seq)
        if relay is not None and relay.target == from_id:
            del self._relays[seq]
            ack = Ack(relay.requester_seq, self._piggyback(relay.requester))
            self._send(relay.requester, ack)

    def _on_ping_req(self, from_id: str, request: PingReq) -> None:
        if request.target == self.node_id:
            self._send(from_id, Ack(request.seq, self._piggyback(from_id)))
            return
        timings = self._timings
        window = timings.probe_interval_ticks - timings.probe_timeout_ticks
        deadline = self._now + max(1, math.floor(window * _NACK_SHARE))
        seq = self._next_seq()
        self._relays[seq] = _Relay(
            from_id, request.seq, request.target, request.want_nack, deadline
        )
        self._wake_by(deadline)
        self._send(request.target, Ping(seq, self._piggyback(request.target)))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & _SEQ_MASK
        return self._seq

    # ----- dissemination and sync ---------------------------------------------------------------

    def _piggyback(self, recipient: str) -> tuple[Update, ...]:
        """Updates to ride on a message to `recipient`, within the byte budget.

        Buddy system: a message to a member we suspect carries that suspicion first, so the
        member can refute it at once.
        """
        budget = self._timings.max_piggyback_bytes
        first: tuple[Update, ...] = ()
        skip = None
        if self._timings.lifeguard:
            member = self._members.get(recipient)
            if member is not None and member.state is MemberState.SUSPECT:
                first = (Suspect(recipient, member.incarnation, self.node_id),)
                budget -= update_size(first[0])
                skip = recipient
        limit = retransmit_limit(self._timings.retransmit_mult, len(self._members))
        return first + tuple(self._broadcasts.take(budget, limit, skip))

    def _gossip_round(self) -> None:
        """Push pending updates to a few random members (recently dead ones included)."""
        if not self._broadcasts:
            return
        recent = self._now - self._timings.push_pull_interval_ticks
        targets = [
            name
            for name, member in self._members.items()
            if name != self.node_id
            and (
                member.state in LIVE_STATES
                or (member.state is MemberState.DEAD and member.changed_at >= recent)
            )
        ]
        for target in self._rng.sample(targets, min(self._timings.gossip_nodes, len(targets))):
            updates = self._piggyback(target)
            if not updates:
                break
            self._send(target, Gossip(updates))

    def _sync_round(self) -> None:
        """Push-pull with one random member, dead ones included, so healed partitions merge."""
        if self._leaving:
            self._next_sync_at = _NEVER
            return
        self._next_sync_at = self._now + self._sync_delay()
        peers = [
            name
            for name, member in self._members.items()
            if name != self.node_id and member.state is not MemberState.LEFT
        ]
        if not self._has_live_peer():
            peers.extend(self._unknown_seeds())
        if peers:
            self._send(self._rng.choice(peers), Sync(self._records(), reply_wanted=True))
        unknown = self._unknown_seeds()
        if unknown and self._has_live_peer():
            # Members that started together can form groups that never hear of each other
            # (the first syncs to a seed are lost while its connection is still coming up).
            self._send(self._rng.choice(unknown), Sync(self._records(), reply_wanted=True))

    def _unknown_seeds(self) -> list[str]:
        return [seed for seed in self._seeds if seed not in self._members]

    def _sync_delay(self) -> int:
        """Ticks to the next push-pull: the period (longer in big groups; one probe interval
        while alone or while a seed is unknown), jittered by +-50% so that members started
        together do not sync in step."""
        if not self._has_live_peer() or self._unknown_seeds():
            period = self._timings.probe_interval_ticks
        else:
            members = len(self._members)
            period = self._timings.push_pull_interval_ticks
            if members > _PUSH_PULL_BASE_MEMBERS:
                period *= math.ceil(math.log2(members / _PUSH_PULL_BASE_MEMBERS)) + 1
        return self._rng.randint(max(1, period // 2), period + period // 2)

    def _has_live_peer(self) -> bool:
        return any(
            member.state in LIVE_STATES
            for name, member in self._members.items()
            if name != self.node_id
        )

    def _on_sync(self, from_id: str, sync: Sync) -> None:
        """Merge a full state; a member reported dead only becomes suspect here (it may refute)."""
        updates: list[Update] = []
        for record in sync.records:
            if record.state is MemberState.ALIVE:
                updates.append(Alive(record.member, record.incarnation, record.metadata))
                self._notify_if_dead(record)
            elif record.state is MemberState.LEFT:
                updates.append(Left(record.member, record.incarnation))
            else:
                updates.append(Suspect(record.member, record.incarnation, from_id))
        self._correct(from_id, [self._apply(update) for update in updates])
        if sync.reply_wanted:
            self._send(from_id, Sync(self._records()))

    def _notify_if_dead(self, record: MemberRecord) -> None:
        """The peer sees alive a member we declared dead at the same incarnation: tell that
        member, so it refutes (to us directly) if it lives; after a healed partition this is
        how each side learns that the other is back."""
        known = self._members.get(record.member)
        if (
            known is not None
            and known.state is MemberState.DEAD
            and known.incarnation == record.incarnation
        ):
            notice = Dead(known.member, known.incarnation, self.node_id)
            self._send(known.member, Gossip((notice,)))

    def _records(self) -> tuple[MemberRecord, ...]:
        return tuple(
            MemberRecord(m.member, m.incarnation, m.state, m.metadata)
            for m in self._members.values()
        )

    # ----- membership rules ---------------------------------------------------------------------

    def _apply(self, update: Update) -> Alive | None:
        """Apply one update; returns a correction for its sender when it is a stale accusation.

        A sender accusing a member we know alive at a higher incarnation missed the refutation,
        and may otherwise wait out its whole suspicion timeout and declare a live member dead.
        """
        known = self._members.get(update.member)
        if (
            not isinstance(update, Alive)
            and known is not None
            and known.state is MemberState.ALIVE
            and update.incarnation < known.incarnation
        ):
            return Alive(known.member, known.incarnation, dict(known.metadata))
        if update.member == self.node_id:
            return self._about_me(update)
        if isinstance(update, Alive):
            self._on_alive(update)
        elif isinstance(update, Suspect):
            self._on_suspect(update)
        else:
            self._on_gone(update)
        return None

    def _correct(self, sender: str, corrections: list[Alive | None]) -> None:
        fresh = tuple(alive for alive in corrections if alive is not None)
        if fresh:
            self._send(sender, Gossip(fresh))

    def _about_me(self, update: Update) -> Alive | None:
        """Refute anything about this node that disagrees with it, at any incarnation >= ours.

        The refutation also goes straight back to the accuser (returned as its correction).
        """
        me = self._me
        if self._leaving or update.incarnation < me.incarnation:
            return None
        if (
            isinstance(update, Alive)
            and update.incarnation == me.incarnation
            and update.metadata == me.metadata
        ):
            return None
        self._refute(update.incarnation)
        return self._alive_update()

    def _refute(self, accused_incarnation: int) -> None:
        self._me.incarnation = max(self._me.incarnation, accused_incarnation) + 1
        self._version += 1
        if self._timings.lifeguard:
            self._awareness.apply(1)
        log.debug("%s: refuting at incarnation %d", self.node_id, self._me.incarnation)
        self._broadcasts.push(self._alive_update())

    def _on_alive(self, update: Alive) -> None:
        member = self._members.get(update.member)
        if member is None:
            member = Member(update.member, update.incarnation, MemberState.ALIVE)
            member.metadata = dict(update.metadata)
            member.changed_at = self._now
            self._members[update.member] = member
            self._version += 1
            self._add_to_probe_order(update.member)
            self._emit(EventKind.JOIN, member)
            self._broadcasts.push(update)
            return
        if update.incarnation <= member.incarnation:
            return
        previous = member.state
        metadata_changed = member.metadata != update.metadata
        member.incarnation = update.incarnation
        member.metadata = dict(update.metadata)
        self._suspicions.pop(update.member, None)
        self._set_state(member, MemberState.ALIVE)
        if previous in LIVE_STATES:
            if previous is MemberState.SUSPECT:
                self._emit(EventKind.ALIVE, member)
            if metadata_changed:
                self._emit(EventKind.UPDATE, member)
        else:
            self._add_to_probe_order(update.member)
            self._emit(EventKind.JOIN, member)
        self._broadcasts.push(update)

    def _on_suspect(self, update: Suspect) -> None:
        member = self._members.get(update.member)
        if (
            member is None
            or update.incarnation < member.incarnation
            or member.state not in LIVE_STATES
        ):
            return
        if member.state is MemberState.SUSPECT:
            if update.incarnation > member.incarnation:
                member.incarnation = update.incarnation
                self._version += 1
            suspicion = self._suspicions.get(update.member)
            if suspicion is not None and suspicion.confirm(update.origin):
                self._wake_by(suspicion.deadline)
                self._broadcasts.push(update)  # others may count this confirmation too
            return
        member.incarnation = update.incarnation
        self._set_state(member, MemberState.SUSPECT)
        live = sum(1 for m in self._members.values() if m.state in LIVE_STATES)
        minimum, maximum = suspicion_bounds(self._timings, live)
        expected = min(self._timings.indirect_checks, live - 2) if self._timings.lifeguard else 0
        suspicion = Suspicion(self._now, minimum, maximum, expected, update.origin)
        self._suspicions[update.member] = suspicion
        self._wake_by(suspicion.deadline)
        self._emit(EventKind.SUSPECT, member)
        if update.origin != self.node_id and self._rng.random() * (live - 2) < expected:
            # About `expected` members check a fresh suspect at once: dead ones get their
            # confirmations sooner, live ones hear of the suspicion (buddy system) and refute.
            self._urgent_probe = update.member
        self._broadcasts.push(update)

    def _on_gone(self, update: Dead | Left) -> None:
        member = self._members.get(update.member)
        if member is None or update.incarnation < member.incarnation:
            return
        left = isinstance(update, Left)
        if member.state is MemberState.LEFT or (member.state is MemberState.DEAD and not left):
            return
        member.incarnation = update.incarnation
        self._suspicions.pop(update.member, None)
        self._set_state(member, MemberState.LEFT if left else MemberState.DEAD)
        self._emit(EventKind.LEAVE if left else EventKind.DEAD, member)
        self._broadcasts.push(update)

    def _suspicion_expired(self, name: str) -> None:
        del self._suspicions[name]
        member = self._members[name]
        if member.state is MemberState.SUSPECT:
            log.debug("%s: %s is dead (suspicion timed out)", self.node_id, name)
            self._apply(Dead(name, member.incarnation, self.node_id))

    # ----- helpers ------------------------------------------------------------------------------

    def _set_state(self, member: Member, state: MemberState) -> None:
        if member.state is not state:
            member.changed_at = self._now
        member.state = state
        self._version += 1

    def _alive_update(self) -> Alive:
        return Alive(self.node_id, self._me.incarnation, dict(self._me.metadata))

    def _emit(self, kind: EventKind, member: Member) -> None:
        self._events.append(
            MemberEvent(kind, member.member, member.incarnation, dict(member.metadata))
        )

    def _send(self, to_id: str, message: Message) -> None:
        self._messages.append((to_id, message))


def _check_metadata(metadata: Mapping[str, MetaValue]) -> None:
    problem = metadata_problem(metadata)
    if problem is not None:
        raise SwimError(problem)
