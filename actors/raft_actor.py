"""`RaftActor`: drives the Raft core for one node: ticks, peer messages, client writes and reads.

It persists (one fsync per batch) before sending, applies committed entries to the state machine,
answers clients, and takes snapshots when the core asks. Protocol logic stays in `caddy/raft`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pykka

from actors.reading_inbox import ReadFailed, ReadingInbox
from actors.status_board import RaftStatus, StatusBoard
from actors.ticker import Tick
from actors.transport import ClientRoute, Inbound, InboundBatch, Transport
from caddy.config import ClusterConfig
from caddy.errors import NotLeader, WireError
from caddy.raft.codec import from_wire, to_wire
from caddy.raft.errors import RequestRejected
from caddy.raft.membership import MemberRole
from caddy.raft.messages import Message
from caddy.raft.node import RaftNode
from caddy.raft.ready import SEND_BEFORE_PERSIST, Ready, StateRole
from caddy.raft.types import EntryKind, SnapshotMeta
from caddy.replication.requests import (
    ClientRequest,
    RequestError,
    parse_request,
    result_reply,
    writes_entry,
)
from caddy.replication.sessions import SessionStateMachine
from caddy.replication.state_machine import StateMachine, ok_result
from caddy.storage import SqliteLogStorage

log = logging.getLogger(__name__)

MAX_MESSAGES_PER_READY = 512
EXPIRY_CHECK_TICKS = 10
# Writes proposed together share a log entry up to this size; a larger write gets its own.
MAX_ENTRY_BYTES = 256 * 1024
# Each node snapshots up to this much later than the thresholds say (drawn anew each time), so
# the nodes do not all pause together: only a paused leader holds up the cluster's writes.
SNAPSHOT_JITTER_PERCENT = 50


@dataclass(frozen=True, slots=True)
class ReadRouters:
    """Tell the Raft actor, once the transport runs, to read the routers on its own thread;
    `handler` is what its `raft` and `kv` prefixes are registered with."""

    handler: Any


@dataclass(frozen=True, slots=True)
class SnapshotWritten:
    """Told by the snapshot writer thread: the snapshot `meta` with its `data` is durable, or
    making it raised `error`."""

    meta: SnapshotMeta
    data: bytes
    error: BaseException | None


@dataclass(slots=True)
class _PendingEntry:
    """The clients waiting for one proposed entry, in the order of its writes."""

    routes: list[ClientRoute]
    term: int
    deadline: float  # monotonic; past it the clients are told the outcome is unknown


@dataclass(slots=True)
class _PendingRead:
    route: ClientRoute
    key: str
    index: int | None = None  # the read index, once the leader confirmed it


class RaftActor(pykka.ThreadingActor):
    """One node's Raft driver. Peer `raft.*` and client `kv.*` frames arrive in `InboundBatch`es."""

    def __init__(
        self,
        config: ClusterConfig,
        node_id: str,
        transport: Transport,
        state_machine: StateMachine,
        board: StatusBoard,
    ) -> None:
        super().__init__()
        self._board = board
        self._node_id = node_id
        self._transport = transport
        self._reader = state_machine  # serves linearizable reads once ReadIndex confirmed them
        self._state_machine = SessionStateMachine(state_machine)
        self._storage = SqliteLogStorage(
            config.node_data_dir(node_id), node_id=node_id, cluster=config.cluster
        )
        recovered = self._storage.load()
        if recovered.snapshot_data:
            self._state_machine.restore(recovered.snapshot_data)
        raft, tick_ms = config.raft, config.tick_ms
        self.core = RaftNode(
            node_id,
            config.membership,
            storage_state=recovered,
            rng=random.Random(),
            heartbeat_ticks=max(1, raft.heartbeat_ms // tick_ms),
            election_ticks_min=raft.election_timeout_min_ms // tick_ms,
            election_ticks_max=raft.election_timeout_max_ms // tick_ms,
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
        )
        self._writes: dict[int, _PendingEntry] = {}  # by log index
        self._proposals: list[tuple[ClientRoute, ClientRequest]] = []  # not yet proposed
        # Requests answered at once (redirects, malformed), sent when the mailbox message is done
        self._answers: list[tuple[ClientRoute, str, dict[str, Any]]] = []
        self._reads: list[_PendingRead] = []  # waiting for a read index round to start
        self._reads_in_flight: dict[bytes, list[_PendingRead]] = {}
        self._reads_ready: list[_PendingRead] = []  # confirmed, waiting for apply
        self._read_rounds = 0
        self._ticks = 0
        self._request_timeout_s = config.transport.request_timeout_ms / 1000
        self._unprocessed = 0
        # The node's own snapshots are packed and written here, off the Raft thread: packing,
        # writing and syncing a large state take longer than many rounds of replication.
        self._snapshot_writer = ThreadPoolExecutor(1, thread_name_prefix=f"snapshot-{node_id}")
        self._snapshot_writing: Future[bytes] | None = None
        self._snapshot_wanted = False  # asked for while one was being written
        self._publish_status()

    @staticmethod
    def _create_actor_inbox() -> ReadingInbox:
        return ReadingInbox()

    # ----- mailbox ----------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ReadRouters):
            self.actor_inbox.read_from(self._transport, message.handler)
        elif isinstance(message, ReadFailed):
            raise message.error
        elif isinstance(message, SnapshotWritten):
            self._on_snapshot_written(message)
        elif isinstance(message, Tick):
            self.core.tick()
            self._ticks += 1
            if self._ticks % EXPIRY_CHECK_TICKS == 0:
                self._expire_writes()
        elif isinstance(message, InboundBatch):
            for inbound in message.messages:
                self._on_inbound(inbound)
            self._unprocessed += len(message.messages) - 1
        elif isinstance(message, Inbound):
            self._on_inbound(message)
        if self._answers:  # redirects and refusals, for a batch of requests in one go
            answers, self._answers = self._answers, []
            self._transport.reply_many(answers)
        # Batch: many requests queued behind this one ride in one append and one fsync; a bound
        # keeps a never-empty inbox from starving the Ready loop.
        self._unprocessed += 1
        if self.actor_inbox.empty() or self._unprocessed >= MAX_MESSAGES_PER_READY:
            self._unprocessed = 0
            self._process_ready()

    def on_stop(self) -> None:
        self.actor_inbox.stop_reading()
        self._fail_pending("node stopping")
        self._snapshot_writer.shutdown()  # a snapshot being written is finished first
        self._storage.close()

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        log.error("node %s: raft actor failed: %s", self._node_id, exception_value)
        self.actor_inbox.stop_reading()
        self._snapshot_writer.shutdown()
        self._storage.close()

    def _on_inbound(self, inbound: Inbound) -> None:
        if inbound.route is None:
            self._on_peer_message(inbound)
        else:
            self._on_client_request(inbound)

    def _on_peer_message(self, inbound: Inbound) -> None:
        envelope = inbound.envelope
        try:
            message = from_wire(envelope.kind, envelope.body)
        except WireError as error:
            self._board.count_body_drop("raft-body")
            log.debug(
                "node %s: dropped %s from %s: %s",
                self._node_id,
                envelope.kind,
                envelope.sender,
                error,
            )
            return
        if message.sender != envelope.sender:
            self._board.count_body_drop("raft-body")
            return
        self.core.step(message)

    def _on_client_request(self, inbound: Inbound) -> None:
        route = inbound.route
        assert route is not None
        try:
            request = parse_request(inbound.envelope.kind, inbound.envelope.body)
        except RequestError as error:
            self._answers.append((route, "kv.error", {"error": str(error), "retry": False}))
            return
        if self.core.state is not StateRole.LEADER:
            self._answers.append((route, "kv.redirect", {"leader": self.core.leader}))
            return
        if request.is_read:
            if not callable(getattr(self._reader, "read", None)):
                no_reads = "this node's state machine has no read(key) method"
                self._answers.append((route, "kv.error", {"error": no_reads, "retry": False}))
                return
            self._reads.append(_PendingRead(route, request.key))
        else:
            self._proposals.append((route, request))

    def _propose_batch(self) -> None:
        """Every write that arrived since the last batch goes into one append (one round trip),
        as few log entries as `MAX_ENTRY_BYTES` allows."""
        if not self._proposals:
            return
        batch, self._proposals = self._proposals, []
        groups = _entry_groups(batch)
        log_time_ms = int(time.time() * 1000)
        entries = [writes_entry([r for _, r in group], log_time_ms) for group in groups]
        try:
            first, term = self.core.propose_many(entries)
        except (NotLeader, RequestRejected) as error:
            leader = error.leader_hint if isinstance(error, NotLeader) else None
            self._transport.reply_many(
                [(route, "kv.redirect", {"leader": leader}) for route, _ in batch]
            )
            return
        deadline = time.monotonic() + self._request_timeout_s
        for index, group in enumerate(groups, first):
            self._writes[index] = _PendingEntry([route for route, _ in group], term, deadline)

    # ----- the Ready loop ---------------------------------------------------------------------

    def _process_ready(self) -> None:
        self._propose_batch()
        self._start_read_round()
        while self.core.has_ready():
            ready = self.core.ready()
            # A leader's replication messages go out before its own fsync, so both disks work
            # at once. Safe here: their acknowledgements are handled on this thread only after
            # the sync below, so the leader never counts its own unsynced entries. Everything
            # else (votes, acknowledgements) waits for the sync, as `Ready` requires.
            for to, message in ready.messages:
                if isinstance(message, SEND_BEFORE_PERSIST):
                    self._send(to, message)
            self._persist(ready)
            for to, message in ready.messages:
                if not isinstance(message, SEND_BEFORE_PERSIST):
                    self._send(to, message)
            self._apply(ready)
            if ready.soft_state is not None:
                self._on_soft_state(ready)
            for read_state in ready.read_states:
                for read in self._reads_in_flight.pop(read_state.context, []):
                    read.index = read_state.index
                    self._reads_ready.append(read)
            self.core.advance(ready)
            self._serve_reads()
            if ready.snapshot_request is not None:
                self._take_snapshot()  # after advance: the core's applied index is the machine's
        self._publish_status()

    def _send(self, to: str, message: Message) -> None:
        """Send; the core hears of a message the transport had to drop (it then probes `to`
        instead of filling the window with appends nobody receives)."""
        if not self._transport.send(to, message.kind, to_wire(message)):
            self.core.report_undelivered(to, message)

    def _persist(self, ready: Ready) -> None:
        storage = self._storage
        if ready.snapshot is not None:
            if self._snapshot_writing is not None:  # the leader's snapshot replaces our own
                self._snapshot_writing.result()
            storage.save_snapshot(ready.snapshot.meta, ready.snapshot.data)
            if self.core.member_role is not MemberRole.WITNESS:
                self._state_machine.restore(ready.snapshot.data)
        if ready.entries:
            storage.append(ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)
        if ready.must_sync:
            storage.sync()

    def _apply(self, ready: Ready) -> None:
        replies: list[tuple[ClientRoute, str, dict[str, Any]]] = []
        for entry in ready.committed_entries:
            results: list[Any] = []
            if entry.kind is EntryKind.COMMAND:
                results = self._state_machine.apply_batch(entry.data)
            pending = self._writes.pop(entry.index, None)
            if pending is None:
                continue
            if pending.term != entry.term:  # another leader's entry took this index
                error = {"error": "leadership changed", "retry": True}
                replies.extend((route, "kv.error", error) for route in pending.routes)
            elif len(results) != len(pending.routes):  # not the entry proposed: never expected
                log.error("node %s: entry %d does not match its writes", self._node_id, entry.index)
                error = {"error": "entry does not match its writes", "retry": False}
                replies.extend((route, "kv.error", error) for route in pending.routes)
            else:
                replies.extend(
                    (route, *result_reply(result))
                    for route, result in zip(pending.routes, results, strict=True)
                )
        if replies:
            self._transport.reply_many(replies)

    def _on_soft_state(self, ready: Ready) -> None:
        soft = ready.soft_state
        assert soft is not None
        log.info(
            "node %s: %s in term %d (leader %s)",
            self._node_id,
            soft.state.value,
            soft.term,
            soft.leader,
        )
        if soft.state is not StateRole.LEADER:
            self._fail_pending("leadership lost")

    def _expire_writes(self) -> None:
        """Writes not committed within the request timeout: the client may retry them."""
        now = time.monotonic()
        expired = [index for index, pending in self._writes.items() if pending.deadline < now]
        error = {"error": "request timeout", "retry": True}
        for index in expired:
            pending = self._writes.pop(index)
            self._transport.reply_many([(route, "kv.error", error) for route in pending.routes])

    def _fail_pending(self, reason: str) -> None:
        """Answer every waiting client: the outcome of a write is unknown, so they retry."""
        routes = [route for pending in self._writes.values() for route in pending.routes]
        self._writes.clear()
        routes.extend(route for route, _ in self._proposals)
        self._proposals.clear()
        reads = [*self._reads, *self._reads_ready]
        for waiting in self._reads_in_flight.values():
            reads.extend(waiting)
        routes.extend(read.route for read in reads)
        error = {"error": reason, "retry": True}
        self._transport.reply_many([(route, "kv.error", error) for route in routes])
        self._reads.clear()
        self._reads_ready.clear()
        self._reads_in_flight.clear()

    def _start_read_round(self) -> None:
        """One ReadIndex round confirms leadership for every read that arrived since the last."""
        if not self._reads:
            return
        self._read_rounds += 1
        context = self._read_rounds.to_bytes(8, "big")
        try:
            self.core.read_index(context)
        except NotLeader as error:
            redirect = {"leader": error.leader_hint}
            replies = [(read.route, "kv.redirect", redirect) for read in self._reads]
            self._transport.reply_many(replies)
            self._reads.clear()
            return
        self._reads_in_flight[context] = self._reads
        self._reads = []

    def _serve_reads(self) -> None:
        applied = self.core.applied_index
        still_waiting, replies = [], []
        for read in self._reads_ready:
            if read.index is not None and read.index <= applied:
                replies.append((read.route, *result_reply(ok_result(self._reader.read(read.key)))))
            else:
                still_waiting.append(read)
        self._reads_ready = still_waiting
        if replies:
            self._transport.reply_many(replies)

    def _take_snapshot(self) -> None:
        """Take a view of the state machine at the applied index (cheap: a copy, not the bytes);
        the writer thread makes the bytes and the durable file from it, and only then are the
        in-memory and stored logs compacted (`_on_snapshot_written`)."""
        if self._snapshot_writing is not None:
            self._snapshot_wanted = True  # the core asks once: taken when this one is written
            return
        applied = self.core.applied_index
        if applied <= self.core.log.snapshot.index:
            return
        meta = self.core.snapshot_meta(applied)
        if self.core.member_role is MemberRole.WITNESS:
            view: Callable[[], bytes] = bytes  # a witness has no state: it only trims its log
        else:
            view = self._state_machine.snapshot_view()
        writing = self._snapshot_writer.submit(self._write_snapshot, meta, view)
        self._snapshot_writing = writing
        writing.add_done_callback(lambda done: self._tell_written(meta, done))

    def _write_snapshot(self, meta: SnapshotMeta, view: Callable[[], bytes]) -> bytes:
        """On the writer thread: the snapshot's bytes, once durable."""
        data = view()
        self._storage.write_snapshot(meta, data)
        return data

    def _tell_written(self, meta: SnapshotMeta, done: Future[bytes]) -> None:
        """On the writer thread."""
        error = done.exception()
        written = SnapshotWritten(meta, b"" if error else done.result(), error)
        try:
            self.actor_ref.tell(written)
        except pykka.ActorDeadError:  # stopping: the next start completes what was written
            pass

    def _on_snapshot_written(self, written: SnapshotWritten) -> None:
        self._snapshot_writing = None
        if written.error is not None:
            raise written.error  # as if the write had failed on this thread
        meta = written.meta
        if meta.index > self.core.log.snapshot.index:  # else a leader's snapshot overtook it
            self.core.compact(meta.index, written.data)
            self._storage.cut_log_to_snapshot(meta)
            log.info("node %s: snapshot at index %d written", self._node_id, meta.index)
        if self._snapshot_wanted:
            self._snapshot_wanted = False
            self._take_snapshot()

    # ----- status and control -----------------------------------------------------------------

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
            pending_writes=sum(len(pending.routes) for pending in self._writes.values()),
            followers=core.follower_progress(),
        )

    def hand_over_leadership(self) -> str | None:
        """If leader, start a transfer to the most caught-up voter; returns its id."""
        target = self.core.transfer_candidate()
        if target is None:
            return None
        self.core.transfer_leadership(target)
        self._process_ready()
        return target


def _state_name(core: RaftNode) -> str:
    role = core.member_role
    if role is MemberRole.LEARNER:
        return "learner"
    if role is MemberRole.WITNESS:
        return "witness"
    if core.state is StateRole.PRE_CANDIDATE:
        return "candidate"
    return core.state.value


def _entry_groups(
    batch: list[tuple[ClientRoute, ClientRequest]],
) -> list[list[tuple[ClientRoute, ClientRequest]]]:
    """Consecutive writes, cut into groups of about `MAX_ENTRY_BYTES` (one entry each)."""
    groups: list[list[tuple[ClientRoute, ClientRequest]]] = [[]]
    size = 0
    for item in batch:
        item_size = item[1].size
        if groups[-1] and size + item_size > MAX_ENTRY_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item_size
    return groups
