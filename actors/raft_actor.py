"""`RaftActor`: drives the Raft core of one node and its key-value service: ticks, peer
messages, client writes and reads.

A driver only: the Ready order is `caddy.raft.driver`'s, the requests' bookkeeping is
`caddy.replication.service`'s; this actor turns mailbox messages into their inputs and their
outputs into sends, replies, status and node events.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import pykka

from actors.events import EventBus
from actors.reading_inbox import ReadFailed, ReadingInbox, ReadRouters
from actors.status_board import RaftStatus, StatusBoard
from actors.ticker import Tick
from actors.transport import ClientRoute, Inbound, InboundBatch, Transport
from caddy.config import ClusterConfig
from caddy.errors import NotLeader, WireError
from caddy.events import (
    LeaderChanged,
    LeaderElected,
    LeaderLost,
    MembershipChanged,
    QuorumLost,
    QuorumRegained,
    RegistryChanged,
    SnapshotInstalled,
    SnapshotTaken,
)
from caddy.failover import Action, carry_out
from caddy.raft.codec import from_wire, to_wire
from caddy.raft.driver import RaftDriver, ReadyHandler, write_snapshot_file
from caddy.raft.errors import RequestRejected
from caddy.raft.membership import MemberRole, role_of
from caddy.raft.messages import Message
from caddy.raft.node import RaftNode
from caddy.raft.read_index import ReadState
from caddy.raft.ready import Ready, Snapshot, SoftState, StateRole
from caddy.raft.storage_api import LogStorage
from caddy.raft.timings import RaftTimings
from caddy.raft.types import Entry, EntryKind, Membership, SnapshotMeta
from caddy.reconfig import membership_document
from caddy.replication.commands import encode_batch
from caddy.replication.locks import LockView, SweepTimer, sweep_entry
from caddy.replication.node_stack import node_stack
from caddy.replication.registry import seed_command
from caddy.replication.service import KeyValueService
from caddy.replication.state_machine import StateMachine
from caddy.storage import SqliteLogStorage
from caddy.storage.vote_records import VoteRecords, vote_document

log = logging.getLogger(__name__)

# Messages handled before the Ready loop runs, at most: many requests queued behind each other
# ride in one append and one fsync, and a never-empty inbox cannot starve the loop.
MAX_MESSAGES_PER_READY = 512
EXPIRY_CHECK_TICKS = 10  # writes past their deadline are answered this often
# Each node snapshots up to this much later than the thresholds say (drawn anew each time), so
# the nodes do not all pause together: only a paused leader holds up the cluster's writes. Not a
# setting: it spreads pauses, it changes no guarantee.
SNAPSHOT_JITTER_PERCENT = 50
# The node events the actor is told: the FencingActor's quorum verdict, which the key-value
# service answers `no_quorum` by.
EVENTS_TOLD = (QuorumLost.kind, QuorumRegained.kind)
RECENT_VOTES = 32  # the `votes` status section's length (the file keeps many more)


@dataclass(frozen=True, slots=True)
class SnapshotWritten:
    """Told by the snapshot writer thread: the snapshot `meta` with its `data` is durable, or
    making it raised `error`."""

    meta: SnapshotMeta
    data: bytes
    error: BaseException | None


class ThreadSnapshotWriter:
    """The node's own snapshots are packed and written on a thread of their own, off the Raft
    thread: packing, writing and syncing a large state take longer than many rounds of
    replication. The actor hears of each by a `SnapshotWritten` message."""

    def __init__(self, node_id: str, storage: LogStorage, tell: Callable[[Any], None]) -> None:
        self._storage = storage
        self._tell = tell
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"snapshot-{node_id}")
        self.writing: Future[bytes] | None = None

    def start(self, meta: SnapshotMeta, view: Callable[[], bytes]) -> None:
        writing = self._executor.submit(write_snapshot_file, self._storage, meta, view)
        self.writing = writing
        writing.add_done_callback(lambda done: self._report(meta, done))

    def finish(self) -> None:
        if self.writing is not None:
            self.writing.result()

    def shutdown(self) -> None:
        """Wait for a write in progress; a stopping node's next start completes what it wrote."""
        self._executor.shutdown()

    def _report(self, meta: SnapshotMeta, done: Future[bytes]) -> None:
        """On the writer thread."""
        error = done.exception()
        written = SnapshotWritten(meta, b"" if error else done.result(), error)
        try:
            self._tell(written)
        except pykka.ActorDeadError:  # stopping: the next start completes what was written
            pass


class RaftActor(pykka.ThreadingActor, ReadyHandler):
    """One node's Raft driver. Peer `raft.*` and client `kv.*` frames arrive in `InboundBatch`es.

    `storage`: any `LogStorage`; the node's SQLite log under its data dir unless given (and
    then its vote record file beside it, `caddy.storage.vote_records`; with a given storage,
    votes are kept in memory only)."""

    def __init__(
        self,
        config: ClusterConfig,
        node_id: str,
        transport: Transport,
        state_machine: StateMachine,
        board: StatusBoard,
        *,
        storage: LogStorage | None = None,
        events: EventBus | None = None,
        join: bool = False,
    ) -> None:
        super().__init__()
        self._board = board
        self._events = events
        self._node_id = node_id
        self._transport = transport
        stack = node_stack(state_machine)
        self._state_machine, self._locking, self._registry = (
            stack.sessions,
            stack.locking,
            stack.registry,
        )
        self._registry.on_change = self._registry_changed
        self._registry_section = self._registry_document()
        # The topology's services, written into the registry by the first leader to find it
        # unseeded (`caddy.replication.registry`); asked again a second later if not applied.
        self._seed = seed_command(
            (s.name, [(b.id, b.address, b.weight) for b in s.backends]) for s in config.services
        )
        self._seeding = SweepTimer()
        self._config_services = bool(config.services)
        self._sweeps = SweepTimer()
        self._vote_records: VoteRecords | None = None
        if storage is None:
            storage = SqliteLogStorage(
                config.node_data_dir(node_id), node_id=node_id, cluster=config.cluster
            )
            self._vote_records = VoteRecords(config.node_data_dir(node_id))
        self._storage = storage
        earlier = self._vote_records.load() if self._vote_records else []
        self._recent_votes: deque[dict[str, Any]] = deque(earlier, maxlen=RECENT_VOTES)
        self._votes_taken = 0
        self._votes_section = self._votes_document()
        recovered = self._storage.load()
        if recovered.snapshot_data:
            self._state_machine.restore(recovered.snapshot_data)
        raft = config.raft
        # A node joining a running cluster starts a member of nothing: it never campaigns, and
        # learns the membership from the leader's log or snapshot once it is added.
        initial = Membership() if join else config.membership
        self.core = RaftNode(
            node_id,
            initial,
            storage_state=recovered,
            rng=random.Random(),
            **RaftTimings.from_settings(raft, config.tick_ms).core_kwargs(),
            max_append_entries=raft.max_append_entries,
            max_append_bytes=raft.max_append_bytes,
            max_inflight=raft.max_inflight,
            snapshot_threshold=raft.snapshot_threshold,
            snapshot_threshold_bytes=raft.snapshot_threshold_bytes,
            snapshot_jitter_percent=SNAPSHOT_JITTER_PERCENT,
            pre_vote=raft.pre_vote,
            check_quorum=raft.check_quorum,
            lease_reads=raft.lease_reads,
            snapshot_chunk_bytes=config.replication.snapshot_chunk_bytes,
            max_message_bytes=config.transport.max_message_bytes,
        )
        reads = getattr(state_machine, "read", None)
        self.service: KeyValueService[ClientRoute] = KeyValueService(
            node_id=node_id,
            request_timeout_s=config.transport.request_timeout_ms / 1000,
            read=reads if callable(reads) else None,
            max_message_bytes=config.transport.max_message_bytes,
            lock_view=self._lock_view,
        )
        self._writer = ThreadSnapshotWriter(node_id, self._storage, self._tell_self)
        self.driver = RaftDriver(self.core, self._storage, self, writer=self._writer)
        self._ticks = 0
        self._unprocessed = 0
        self._timings_ms = _timings_ms(self.core, config.tick_ms)  # replaced whole on reload
        self._membership: Membership = self.core.membership  # as last published
        self._reach(self._membership)
        if self._membership != config.membership and self._membership != Membership():
            log.info(
                "node %s: membership from the log: %s (the topology file says %s)",
                node_id,
                _described(self._membership),
                _described(config.membership),
            )
        self._leading = False
        self._publish_status()
        board.contribute("raft", self._status_section, top_level=True)
        board.contribute("votes", lambda: self._votes_section)
        board.contribute("membership", lambda: membership_document(self._membership))
        board.contribute("registry", lambda: self._registry_section)

    @staticmethod
    def _create_actor_inbox() -> ReadingInbox:
        return ReadingInbox()

    def _tell_self(self, message: Any) -> None:
        self.actor_ref.tell(message)

    # ----- mailbox ----------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ReadRouters):
            self.actor_inbox.read_from(self._transport, message.handler)
        elif isinstance(message, ReadFailed):
            raise message.error
        elif isinstance(message, SnapshotWritten):
            if message.error is not None:
                raise message.error  # as if the write had failed on this thread
            self.driver.snapshot_written(message.meta, message.data)
        elif isinstance(message, Tick):
            self.core.tick()
            self._ticks += 1
            if self._ticks % EXPIRY_CHECK_TICKS == 0:
                self.service.expire(time.monotonic())
            if self._leading:
                self._sweep_locks()
                self._seed_registry()
        elif isinstance(message, InboundBatch):
            for inbound in message.messages:
                self._on_inbound(inbound)
            self._unprocessed += len(message.messages) - 1
        elif isinstance(message, Inbound):
            self._on_inbound(message)
        elif isinstance(message, QuorumLost | QuorumRegained):
            self.service.has_quorum = isinstance(message, QuorumRegained)
        self._send_replies()  # redirects and refusals, for a batch of requests in one go
        self._unprocessed += 1
        if self.actor_inbox.empty() or self._unprocessed >= MAX_MESSAGES_PER_READY:
            self._unprocessed = 0
            self._process_ready()

    def on_stop(self) -> None:
        self.actor_inbox.stop_reading()
        self.service.fail_pending("node stopping")
        self._send_replies()
        self._writer.shutdown()  # a snapshot being written is finished first
        self._storage.close()

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        log.error("node %s: raft actor failed: %s", self._node_id, exception_value)
        self.actor_inbox.stop_reading()
        self._writer.shutdown()
        self._storage.close()

    def _on_inbound(self, inbound: Inbound) -> None:
        envelope = inbound.envelope
        if inbound.route is not None:
            core = self.core
            self.service.request(
                inbound.route,
                envelope.kind,
                envelope.body,
                leader=core.state is StateRole.LEADER,
                leader_hint=core.leader,
            )
            return
        try:
            message = from_wire(envelope.kind, envelope.body)
        except WireError as error:  # counted by peer, logged at most once per interval
            self._transport.count_body_drop(
                "raft-body", envelope.sender, str(error), source=inbound.source
            )
            return
        if message.sender != envelope.sender:
            detail = f"{envelope.kind}: the body's sender is not the envelope's"
            self._transport.count_body_drop(
                "raft-body", envelope.sender, detail, source=inbound.source
            )
            return
        self.core.step(message)

    def _send_replies(self) -> None:
        replies = self.service.take_replies()
        if replies:
            self._transport.reply_many(replies)

    # ----- the Ready loop ---------------------------------------------------------------------

    def _process_ready(self) -> None:
        self._propose()
        self._start_read_round()
        self.driver.process()
        if self.core.votes_recorded != self._votes_taken:
            self._record_votes()
        membership = self.core.membership
        if membership is not self._membership:  # the core holds a new value at each change
            previous, self._membership = self._membership, membership
            self._reach(membership)
            if membership != previous:
                self._log_membership_change(previous, membership)
                self._publish(
                    MembershipChanged,
                    voters=membership.voters,
                    learners=membership.learners,
                    witnesses=membership.witnesses,
                )
        self._send_replies()  # refused proposals and read rounds
        self._publish_status()

    def _reach(self, membership: Membership) -> None:
        """Connect to members added at run time that the topology file does not list."""
        for node, address in membership.addresses:
            if node != self._node_id:
                self._transport.add_peer(node, address)

    def _log_membership_change(self, previous: Membership, membership: Membership) -> None:
        log.info("node %s: membership now %s", self._node_id, _described(membership))
        was, now = role_of(previous, self._node_id), role_of(membership, self._node_id)
        if now is MemberRole.NONE and was is not MemberRole.NONE:
            log.warning(
                "node %s: removed from the cluster: it serves no more (no vote, no data); "
                "stop this process, or add it again (caddy-ctl add-node)",
                self._node_id,
            )

    def _propose(self) -> None:
        """Every write that arrived since the last proposal goes into one append."""
        service = self.service
        proposal = service.take_proposal(int(time.time() * 1000))
        if proposal is None:
            return
        try:
            first, term = self.core.propose_many(proposal.entries)
        except (NotLeader, RequestRejected) as error:
            leader = error.leader_hint if isinstance(error, NotLeader) else None
            service.proposal_refused(proposal, leader)
            return
        service.proposed(proposal, first, term, time.monotonic())

    def _sweep_locks(self) -> None:
        """Once a lease lapsed or a wait ran out, a sweep entry lets the log time pass it, so the
        lock passes on with no other write."""
        now_ms = int(time.time() * 1000)
        if self._sweeps.due(self._locking.locks.next_deadline_ms(), now_ms):
            try:
                self.core.propose_many([sweep_entry(now_ms)])
            except (NotLeader, RequestRejected):
                pass  # the next leader sweeps

    def _seed_registry(self) -> None:
        if self._registry.registry.seeded or not self._config_services:
            return
        now_ms = int(time.time() * 1000)
        if self._seeding.due(0, now_ms):
            try:
                self.core.propose_many([encode_batch(now_ms, [("", 0, 0, self._seed)])])
            except (NotLeader, RequestRejected):
                pass  # the next leader seeds

    def _registry_changed(self) -> None:
        """On this thread, as an entry changed it: the status section, replaced whole, and the
        event the balancer follows."""
        self._registry_section = self._registry_document()
        registry = self._registry.registry
        services = tuple(
            (name, tuple((b, e.address, e.weight, e.draining) for b, e in sorted(backends.items())))
            for name, backends in sorted(registry.services.items())
        )
        self._publish(RegistryChanged, version=registry.version, services=services)

    def _registry_document(self) -> dict[str, Any]:
        registry = self._registry.registry
        return {
            "seeded": registry.seeded,
            "version": registry.version,
            "services": registry.document(),
        }

    def _lock_view(self, name: str, owner: str) -> tuple[LockView, int]:
        """For the service's lock waits: the waiter's place now, by the later of this node's
        clock and the log time."""
        now_ms = max(int(time.time() * 1000), self._state_machine.log_time_ms)
        return self._locking.locks.view(name, owner, now_ms), now_ms

    def _start_read_round(self) -> None:
        """One ReadIndex round confirms leadership for every read that arrived since the last."""
        context = self.service.take_read_round()
        if context is None:
            return
        try:
            self.core.read_index(context)
        except NotLeader as error:
            self.service.read_round_refused(context, error.leader_hint)

    # ----- ReadyHandler: what the driver does besides storage ---------------------------------

    def send(self, to: str, message: Message) -> None:
        """Send; the core hears of a message the transport had to drop (it then probes `to`
        instead of filling the window with appends nobody receives)."""
        if not self._transport.send(to, message.kind, to_wire(message)):
            self.core.report_undelivered(to, message)

    def restore(self, snapshot: Snapshot) -> None:
        self._state_machine.restore(snapshot.data)
        meta = snapshot.meta
        log.info(
            "node %s: installed the leader's snapshot at index %d (%d bytes)",
            self._node_id,
            meta.index,
            len(snapshot.data),
        )
        self._publish(SnapshotInstalled, index=meta.index, term=meta.term)

    def apply(self, entries: list[Entry]) -> None:
        service, machine, command = self.service, self._state_machine, EntryKind.COMMAND
        for entry in entries:
            results = machine.apply_batch(entry.data) if entry.kind is command else []
            service.committed(entry.index, entry.term, results)
        if changes := self._locking.locks.take_changes():
            service.locks_changed(changes, int(time.time() * 1000))

    def soft_state(self, soft: SoftState) -> None:
        log.info(
            "node %s: %s in term %d (leader %s)",
            self._node_id,
            soft.state.value,
            soft.term,
            soft.leader,
        )
        was_leader, self._leading = self._leading, soft.state is StateRole.LEADER
        if not self._leading:
            self.service.fail_pending("leadership lost")
        self._publish_status()  # subscribers that look at the status see the new state
        state = _state_name(self.core)
        self._publish(LeaderChanged, term=soft.term, leader=soft.leader, state=state)
        if self._leading and not was_leader:
            self._publish(LeaderElected, term=soft.term)
        elif was_leader and not self._leading:
            self._publish(LeaderLost, term=soft.term, leader=soft.leader)

    def read_states(self, states: list[ReadState]) -> None:
        for state in states:
            self.service.read_confirmed(state.context, state.index)

    def advanced(self, ready: Ready) -> None:
        self.service.serve_reads(self.core.applied_index)
        self._send_replies()  # the answers to what this Ready committed, before the next fsync

    def snapshot_view(self) -> Callable[[], bytes]:
        return self._state_machine.snapshot_view()

    def snapshot_taken(self, meta: SnapshotMeta) -> None:
        log.info("node %s: snapshot at index %d written", self._node_id, meta.index)
        self._publish(SnapshotTaken, index=meta.index, term=meta.term)

    # ----- status, events and control ---------------------------------------------------------

    def _publish(self, event_type: type, **fields: Any) -> None:
        if self._events is not None:
            self._events.publish(event_type, **fields)

    def _publish_status(self) -> None:
        core = self.core
        self._board.raft = RaftStatus(
            state=_state_name(core),
            term=core.term,
            leader=core.leader,
            commit_index=core.commit_index,
            applied_index=core.applied_index,
            last_log_index=core.last_index,
            snapshot_index=core.log.snapshot.index,
            pending_writes=self.service.pending_writes,
            followers=core.follower_progress(),
            last_step_down=core.step_down_reason,
            membership_change_pending=core.membership_change_pending,
        )

    def _record_votes(self) -> None:
        """The votes the core decided since the last Ready: into the record file and the
        `votes` status section (replaced whole: other threads read it)."""
        core = self.core
        made, self._votes_taken = core.votes_recorded - self._votes_taken, core.votes_recorded
        now = time.time()
        documents = [vote_document(record, now) for record in core.vote_audit[-made:]]
        self._recent_votes.extend(documents)
        if self._vote_records is not None:
            self._vote_records.append(documents)
        self._votes_section = self._votes_document()

    def _votes_document(self) -> dict[str, Any]:
        return {"recent": list(self._recent_votes)}

    def _status_section(self) -> dict[str, Any]:
        """Called on the asking thread: reads the posted snapshot only."""
        raft = self._board.raft
        return {**asdict(raft), "timings": self._timings_ms} if raft is not None else {}

    def carry_out(self, action: Action) -> str | None:
        """Start what the failover policy decided; None when started, else why not."""
        refusal = carry_out(self.core, action)
        if refusal is None:
            self._process_ready()
        return refusal

    def reload_settings(self, config: ClusterConfig) -> None:
        """A settings reload (`ClusterManager.reload`; what is live: `caddy.reload`)."""
        raft = config.raft
        self.core.retime(
            **RaftTimings.from_settings(raft, config.tick_ms).core_kwargs(),
            snapshot_threshold=raft.snapshot_threshold,
            snapshot_threshold_bytes=raft.snapshot_threshold_bytes,
        )
        self.service.request_timeout_s = config.transport.request_timeout_ms / 1000
        self._timings_ms = _timings_ms(self.core, config.tick_ms)

    def ping(self) -> float:
        """Answered as soon as this thread gets to it (the failover's lag check), with the
        longest fsync of the log since the last ping (its disk check)."""
        return self._storage.take_slowest_sync_s()

    def set_draining(self, draining: bool) -> None:
        """Draining: redirect every new client request; those queued already finish."""
        self.service.draining = draining

    def hand_over_leadership(self) -> str | None:
        """If leader, start a transfer to the most caught-up voter; returns its id."""
        target = self.core.transfer_candidate()
        if target is None:
            return None
        self.core.transfer_leadership(target)
        self._process_ready()
        return target


def _timings_ms(core: RaftNode, tick_ms: int) -> dict[str, int]:
    """The timings the core runs with, for the status: what a settings reload changed."""
    ticks = core.timings
    return {
        "heartbeat_ms": ticks["heartbeat_ticks"] * tick_ms,
        "election_timeout_min_ms": ticks["election_ticks_min"] * tick_ms,
        "election_timeout_max_ms": ticks["election_ticks_max"] * tick_ms,
    }


def _state_name(core: RaftNode) -> str:
    role = core.member_role
    if role is MemberRole.LEARNER:
        return "learner"
    if role is MemberRole.WITNESS:
        return "witness"
    if core.state is StateRole.PRE_CANDIDATE:
        return "candidate"
    return core.state.value


def _described(membership: Membership) -> str:
    groups = (
        ("voters", membership.voters),
        ("learners", membership.learners),
        ("witnesses", membership.witnesses),
    )
    return "; ".join(f"{name} {', '.join(sorted(nodes))}" for name, nodes in groups if nodes)
