"""One Raft node as a pure state machine (etcd RawNode style): ticks, messages and requests in,
Ready batches out. Elections with PreVote and CheckQuorum, replication, snapshots, reads, changes.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from caddy.errors import NotLeader
from caddy.raft.errors import CommittedEntryConflict, RequestRejected
from caddy.raft.log import RaftLog
from caddy.raft.membership import (
    ChangeKind,
    MemberRole,
    apply_change,
    decode_membership,
    encode_membership,
    members,
    quorum_index,
    quorum_size,
    role_of,
    voting_members,
)
from caddy.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    RequestVote,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)
from caddy.raft.progress import Progress, ProgressState
from caddy.raft.read_index import ReadIndexTracker, ReadState
from caddy.raft.ready import Ready, Snapshot, SoftState, StateRole, VoteRecord
from caddy.raft.storage_api import RecoveredState
from caddy.raft.types import Entry, EntryKind, HardState, Membership, SnapshotMeta
from caddy.sizes import append_bytes_limit, membership_bytes, snapshot_chunk_limit

logger = logging.getLogger(__name__)

_FROM_LEADER = (AppendEntries, Heartbeat, InstallSnapshot)


class RandomSource(Protocol):
    """The part of `random.Random` the core uses; the caller seeds it."""

    def randint(self, a: int, b: int) -> int: ...


class RaftNode:
    """The consensus core of one node. No I/O: the driver persists, sends and applies Ready.

    Nodes that join an existing cluster start with an empty `membership` and learn the real one
    from the leader. At start the driver restores the state machine from
    `storage_state.snapshot_data` itself; committed entries after it come out of `ready()`.
    """

    def __init__(
        self,
        node_id: str,
        membership: Membership,
        *,
        storage_state: RecoveredState,
        rng: RandomSource,
        heartbeat_ticks: int,
        election_ticks_min: int,
        election_ticks_max: int,
        max_append_entries: int = 64,
        max_append_bytes: int = 1 << 20,
        max_inflight: int = 256,
        snapshot_threshold: int = 10_000,
        snapshot_threshold_bytes: int = 16 << 20,
        snapshot_jitter_percent: int = 0,
        pre_vote: bool = True,
        check_quorum: bool = True,
        lease_reads: bool = False,
        snapshot_chunk_bytes: int = 1 << 20,
        max_message_bytes: int = 16 << 20,
        vote_audit_size: int = 256,
    ) -> None:
        if not 1 <= heartbeat_ticks < election_ticks_min <= election_ticks_max:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks_min <= election_ticks_max")
        if lease_reads and not check_quorum:
            raise ValueError("lease_reads requires check_quorum")
        self.id = node_id
        self._rng = rng
        self._heartbeat_ticks = heartbeat_ticks
        self._election_ticks_min = election_ticks_min
        self._election_ticks_max = election_ticks_max
        self._max_append_entries = max_append_entries
        # Held below the message limit, whatever the settings (see `caddy.sizes`).
        self._max_append_bytes = append_bytes_limit(
            max_message_bytes, max_append_bytes, max_append_entries
        )
        self._max_message_bytes = max_message_bytes
        self._max_inflight = max_inflight
        self._snapshot_threshold = snapshot_threshold
        self._snapshot_threshold_bytes = snapshot_threshold_bytes
        # Each node waits up to this much longer than the thresholds, drawn after each snapshot,
        # so that the nodes of a cluster do not all pause for a snapshot at the same moment.
        self._snapshot_jitter_percent = snapshot_jitter_percent
        self._snapshot_stretch_percent = 100
        self._draw_snapshot_stretch()
        self._applied_bytes = 0  # entry data applied since the last snapshot (bounds the log)
        self._pre_vote = pre_vote
        self._check_quorum = check_quorum
        self._lease_reads = lease_reads
        self._lease_ticks = election_ticks_min - heartbeat_ticks
        self._snapshot_chunk_bytes = snapshot_chunk_bytes

        hard_state = storage_state.hard_state
        base = storage_state.snapshot or SnapshotMeta(0, 0, membership)
        entries = list(storage_state.entries)
        if entries and (
            entries[0].index != base.index + 1 or entries[-1].index != base.index + len(entries)
        ):
            raise ValueError("recovered entries do not follow the snapshot contiguously")
        # A snapshot holds only committed entries, even if the commit index was not yet synced.
        self.log = RaftLog(base, entries, max(hard_state.commit, base.index))
        if hard_state.commit > self.log.last_index():
            raise ValueError("recovered commit index is beyond the recovered log")
        self._snapshot_data = storage_state.snapshot_data or b""
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.state = StateRole.FOLLOWER
        self.leader: str | None = None
        # (index, membership) of every CONFIG entry in the retained log, in order.
        self._config_entries = [
            (entry.index, decode_membership(entry.data))
            for entry in entries
            if entry.kind is EntryKind.CONFIG
        ]
        self.membership = base.membership
        self._voting: frozenset[str] = frozenset()
        self._refresh_membership()

        self._votes: dict[str, bool] = {}
        self._progress: dict[str, Progress] = {}
        # Leader only: members this leader removed, by the index of the CONFIG entry that
        # removed them. They are still sent the log until they were told a commit index that
        # covers their removal: else one that missed it would never learn that it was removed
        # (nobody sends it the log any more) and would ask for votes for good. Data nodes only:
        # a witness is sent no entry data, so it could not follow the log as a non-member.
        self._departing: dict[str, int] = {}
        self._messages: list[tuple[str, Message]] = []
        self._read_states: list[ReadState] = []
        self._reads = ReadIndexTracker()
        self._reads_awaiting_commit: list[bytes] = []
        self._incoming_snapshot: tuple[SnapshotMeta, bytearray] | None = None
        self._now = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        # Ticks since a leader was last heard from. With lease reads a (re)started node counts
        # as having just heard one, so it waits an election timeout before voting: a live
        # leader's lease stays valid across the restarts of its followers.
        self._lease_elapsed = 0 if lease_reads else election_ticks_min
        self._lease_until = 0
        self._randomized_timeout = self._draw_election_timeout()
        self._transferee: str | None = None
        self._transfer_elapsed = 0
        self._snapshot_requested = False
        self._vote_audit: deque[VoteRecord] = deque(maxlen=vote_audit_size)
        self._votes_recorded = 0  # every record ever made, so a driver can take the new ones
        self.step_down_reason: str | None = None  # why this node last stopped leading, if so
        self._prev_hard_state = hard_state
        self._prev_soft_state = self.soft_state()

    # ------------------------------------------------------------------ introspection

    @property
    def commit_index(self) -> int:
        return self.log.commit

    @property
    def applied_index(self) -> int:
        return self.log.applied

    @property
    def last_index(self) -> int:
        return self.log.last_index()

    @property
    def member_role(self) -> MemberRole:
        return role_of(self.membership, self.id)

    @property
    def vote_audit(self) -> list[VoteRecord]:
        """The most recent vote decisions, oldest first."""
        return list(self._vote_audit)

    @property
    def votes_recorded(self) -> int:
        """How many vote decisions this node made since it started (the audit keeps the last)."""
        return self._votes_recorded

    @property
    def membership_change_pending(self) -> bool:
        """A membership change is appended but not yet committed (no other may start)."""
        return bool(self._config_entries) and self._config_entries[-1][0] > self.log.commit

    @property
    def transferee(self) -> str | None:
        """The node leadership is being handed to, while a transfer runs."""
        return self._transferee

    def soft_state(self) -> SoftState:
        return SoftState(self.state, self.leader, self.term, self.member_role)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.commit)

    def progress_of(self, peer: str) -> Progress | None:
        """The leader's replication state for `peer` (None when not leader or not a member)."""
        return self._progress.get(peer)

    def follower_progress(self) -> dict[str, dict[str, int | str]]:
        """For status pages: each follower's match index and replication state (leader only)."""
        if self.state is not StateRole.LEADER:
            return {}
        return {
            peer: {"match": progress.match, "state": progress.state.value}
            for peer, progress in self._progress.items()
        }

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._now += 1
        if self.state is StateRole.LEADER:
            self._tick_leader()
        else:
            self._lease_elapsed += 1
            self._election_elapsed += 1
            if self._election_elapsed >= self._randomized_timeout:
                self._election_elapsed = 0
                self._randomized_timeout = self._draw_election_timeout()
                if self._promotable():
                    self._campaign(pre_vote=self._pre_vote)

    def step(self, message: Message) -> None:
        """Handle one message from a peer (already validated by `codec.from_wire`)."""
        kind = type(message)
        if message.term > self.term:
            if self.state is StateRole.LEADER:
                self.step_down_reason = (
                    f"{message.sender} was in term {message.term}, above this leader's "
                    f"{self.term} ({kind.__name__})"
                )
            if kind is RequestVote:
                if not message.transfer and self._in_lease():
                    self._audit(message, False, "ignored: a leader is still in its lease")
                    return
                if not message.pre_vote:
                    self._become_follower(message.term, None)
            elif kind is VoteResponse and message.pre_vote and message.granted:
                pass  # a granted pre-vote carries the term we would campaign in
            else:
                leader = message.sender if kind in _FROM_LEADER else None
                self._become_follower(message.term, leader)
        elif message.term < self.term:
            self._answer_stale(message)
            return
        if kind is AppendEntries:
            self._handle_append(message)
        elif kind is AppendResponse:
            self._handle_append_response(message)
        elif kind is Heartbeat:
            self._handle_heartbeat(message)
        elif kind is HeartbeatResponse:
            self._handle_heartbeat_response(message)
        elif kind is RequestVote:
            self._handle_vote_request(message)
        elif kind is VoteResponse:
            self._handle_vote_response(message)
        elif kind is InstallSnapshot:
            self._handle_snapshot(message)
        elif kind is SnapshotResponse:
            self._handle_snapshot_response(message)
        elif kind is TimeoutNow:
            if self.state is not StateRole.LEADER and self.id in self.membership.voters:
                logger.info("%s: campaigning on TimeoutNow from %s", self.id, message.sender)
                self._campaign(pre_vote=False, transfer=True)

    def campaign(self) -> None:
        """Start an election now (with PreVote when enabled), as if the election timer fired."""
        if self.state is not StateRole.LEADER and self._promotable():
            self._campaign(pre_vote=self._pre_vote)

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append a command; returns (index, term). Committed once it comes out in Ready."""
        self._check_can_propose()
        index = self.log.last_index() + 1
        self.log.entries.append(Entry(index, self.term, EntryKind.COMMAND, data))
        self._broadcast_append(send_empty=False)
        return index, self.term

    def propose_many(self, commands: Sequence[bytes]) -> tuple[int, int]:
        """Append several commands at once; returns (index of the first, term)."""
        self._check_can_propose()
        first, term = self.log.last_index() + 1, self.term
        command = EntryKind.COMMAND
        self.log.entries.extend(
            [Entry(index, term, command, data) for index, data in enumerate(commands, first)]
        )
        self._broadcast_append(send_empty=False)
        return first, term

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read; a ReadState with `context` comes out in a later Ready."""
        if self.state is not StateRole.LEADER:
            raise NotLeader(self.leader)
        if self.member_role is MemberRole.WITNESS:
            raise NotLeader(None)  # it keeps no state machine to read from
        if not self._committed_in_term():
            self._reads_awaiting_commit.append(context)
        else:
            self._start_read(context)

    def transfer_leadership(self, target: str) -> None:
        """Hand leadership to voter `target`: catch it up, then tell it to campaign at once."""
        if self.state is not StateRole.LEADER:
            raise NotLeader(self.leader)
        if target == self.id or target == self._transferee:
            return
        if role_of(self.membership, target) is not MemberRole.VOTER:
            raise RequestRejected(f"{target} is not a voter")
        logger.info("%s: transferring leadership to %s", self.id, target)
        self._transferee, self._transfer_elapsed = target, 0
        progress = self._progress[target]
        if progress.match == self.log.last_index():
            self._send(target, TimeoutNow(self.term, self.id))
        else:
            self._send_append(target, progress, send_empty=True)

    def retime(
        self,
        *,
        heartbeat_ticks: int,
        election_ticks_min: int,
        election_ticks_max: int,
        snapshot_threshold: int,
        snapshot_threshold_bytes: int,
    ) -> None:
        """New timings and snapshot thresholds (a settings reload). The election timer is drawn
        again from the new range, and a read lease ends: it counted on the old timeouts."""
        if not 1 <= heartbeat_ticks < election_ticks_min <= election_ticks_max:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks_min <= election_ticks_max")
        self._heartbeat_ticks = heartbeat_ticks
        self._election_ticks_min = election_ticks_min
        self._election_ticks_max = election_ticks_max
        self._lease_ticks = election_ticks_min - heartbeat_ticks
        self._lease_until = 0
        self._randomized_timeout = self._draw_election_timeout()
        self._snapshot_threshold = snapshot_threshold
        self._snapshot_threshold_bytes = snapshot_threshold_bytes

    @property
    def timings(self) -> dict[str, int]:
        """The timings in force, in ticks (for status pages)."""
        return {
            "heartbeat_ticks": self._heartbeat_ticks,
            "election_ticks_min": self._election_ticks_min,
            "election_ticks_max": self._election_ticks_max,
        }

    def transfer_candidate(self) -> str | None:
        """The leader's best choice of successor: the voter whose log matches furthest."""
        candidates = [
            (progress.match, peer)
            for peer, progress in self._progress.items()
            if role_of(self.membership, peer) is MemberRole.VOTER
        ]
        return max(candidates)[1] if self.state is StateRole.LEADER and candidates else None

    def change_membership(
        self, kind: ChangeKind, node_id: str, address: str | None = None
    ) -> tuple[int, int]:
        """Propose one membership change; it takes effect on every node as soon as it is appended.
        An addition may carry the node's peer address (`Membership.addresses`).

        Refused while another change is uncommitted, and until the leader committed an entry of
        its own term (which closes the known single-server-change hole after a leader change).
        """
        self._check_can_propose()
        if not self._committed_in_term():
            raise RequestRejected("the leader has not committed an entry of its term yet")
        if self.membership_change_pending:
            raise RequestRejected("another membership change is in progress")
        data_node = role_of(self.membership, node_id) in (MemberRole.VOTER, MemberRole.LEARNER)
        new_membership = apply_change(self.membership, kind, node_id, address)
        index = self.log.last_index() + 1
        entry = Entry(index, self.term, EntryKind.CONFIG, encode_membership(new_membership))
        self.log.append([entry])
        self._config_entries.append((index, new_membership))
        if kind is ChangeKind.REMOVE_NODE and data_node and node_id in self._progress:
            self._departing[node_id] = index  # (a witness holds no log to be sent)
        self._set_membership(new_membership)
        self._broadcast_append(send_empty=False)
        if self._maybe_commit():
            self._after_commit()
        return index, self.term

    def snapshot_meta(self, applied_index: int) -> SnapshotMeta:
        """The metadata of a snapshot of the state at `applied_index` (applied, not yet covered
        by a snapshot): its term and the membership it carries."""
        if not self.log.snapshot.index < applied_index <= self.log.applied:
            raise ValueError(
                f"snapshot index {applied_index} must be in "
                f"({self.log.snapshot.index}, {self.log.applied}]"
            )
        term = self.log.term_at(applied_index)
        assert term is not None
        return SnapshotMeta(applied_index, term, self._membership_at(applied_index))

    def compact(self, applied_index: int, snapshot_data: bytes) -> SnapshotMeta:
        """The application snapshotted its state at `applied_index`: drop the log up to there.

        Returns the snapshot metadata; the driver saves it with `storage.save_snapshot(meta, data)`.
        A driver may instead take `snapshot_meta(applied_index)`, write the snapshot in the
        background and call this once it is durable (if no other snapshot overtook it meanwhile),
        then cut its stored log. A witness calls this with empty data to trim its log.
        """
        meta = self.snapshot_meta(applied_index)
        self.log.compact(meta)
        self._config_entries = [item for item in self._config_entries if item[0] > applied_index]
        self._snapshot_data = snapshot_data
        self._snapshot_requested = False
        # Entries applied while the snapshot was being written stay in the log: they still count.
        retained = self.log.entries[: self.log.applied - meta.index]
        self._applied_bytes = sum(len(entry.data) for entry in retained)
        self._draw_snapshot_stretch()
        for peer, progress in self._progress.items():
            if progress.state is ProgressState.SNAPSHOT:
                progress.become_snapshot(meta.index)  # restart with the newer snapshot
                self._send_snapshot_chunk(peer, progress)
        return meta

    def report_undelivered(self, peer: str, message: Message) -> None:
        """The transport dropped `message` to `peer` (not connected, or not keeping up)."""
        if isinstance(message, InstallSnapshot):
            self.report_snapshot_failed(peer)
        elif isinstance(message, AppendEntries | Heartbeat):
            self.report_unreachable(peer)

    def report_unreachable(self, peer: str) -> None:
        """The transport could not deliver to `peer`: stop pipelining to it until it answers."""
        progress = self._progress.get(peer)
        if progress is not None and progress.state is ProgressState.REPLICATE:
            progress.become_probe()

    def report_snapshot_failed(self, peer: str) -> None:
        """Sending the snapshot to `peer` failed: start over by probing."""
        progress = self._progress.get(peer)
        if progress is not None and progress.state is ProgressState.SNAPSHOT:
            progress.pending_snapshot = 0
            progress.become_probe()

    # ------------------------------------------------------------------ outputs

    def has_ready(self) -> bool:
        """Whether `ready()` has work for the driver."""
        log = self.log
        previous = self._prev_hard_state
        return bool(
            self._messages
            or self._read_states
            or log.pending_snapshot is not None
            or log.stable_index < log.last_index()
            or log.commit > log.applied
            or self.term != previous.term
            or self.vote != previous.vote
            or log.commit != previous.commit
            or self.soft_state() != self._prev_soft_state
            or self._snapshot_due()
        )

    def ready(self) -> Ready:
        """Take the pending work; see `Ready` for the order the driver must follow."""
        log = self.log
        hard_state = self.hard_state()
        previous = self._prev_hard_state
        changed = hard_state != previous
        vote_changed = hard_state.term != previous.term or hard_state.vote != previous.vote
        self._prev_hard_state = hard_state
        entries = log.unstable_entries()
        snapshot = Snapshot(*log.pending_snapshot) if log.pending_snapshot is not None else None
        soft_state = self.soft_state()
        soft_changed = soft_state != self._prev_soft_state
        self._prev_soft_state = soft_state
        snapshot_request = None
        if self._snapshot_due():
            self._snapshot_requested = True
            snapshot_request = log.applied
        witness = self.member_role is MemberRole.WITNESS
        messages, self._messages = self._messages, []
        read_states, self._read_states = self._read_states, []
        return Ready(
            hard_state=hard_state if changed else None,
            entries=entries,
            snapshot=snapshot,
            must_sync=bool(entries) or snapshot is not None or vote_changed,
            messages=messages,
            committed_entries=[] if witness else log.committed_unapplied(),
            read_states=read_states,
            soft_state=soft_state if soft_changed else None,
            snapshot_request=snapshot_request,
            commit_index=log.commit,
        )

    def advance(self, ready: Ready) -> None:
        """The driver carried out `ready`: mark what is now persisted and applied."""
        log = self.log
        if ready.snapshot is not None and log.pending_snapshot is not None:
            if log.pending_snapshot[0] == ready.snapshot.meta:
                log.pending_snapshot = None
        if ready.entries:
            last = ready.entries[-1]
            log.stable_to(last.index, last.term)
        if ready.commit_index > log.applied:
            start = max(log.applied, log.snapshot.index) - log.snapshot.index
            applied = log.entries[start : ready.commit_index - log.snapshot.index]
            self._applied_bytes += sum(len(entry.data) for entry in applied)
            log.applied = ready.commit_index
        if self.state is StateRole.LEADER and self._maybe_commit():
            self._after_commit()

    # ------------------------------------------------------------------ roles

    def _draw_election_timeout(self) -> int:
        """A witness waits a whole election timeout longer than any data voter: it campaigns
        only when no data voter could win (see `_witness_hands_over`)."""
        timeout = self._rng.randint(self._election_ticks_min, self._election_ticks_max)
        if self.member_role is MemberRole.WITNESS:
            timeout += self._election_ticks_max
        return timeout

    def _promotable(self) -> bool:
        """Voters campaign, and witnesses (later: `_draw_election_timeout`); so does a voter
        whose removal is appended but not yet committed.

        Otherwise a leader that removed itself and then lost leadership could hold the only
        copy (with witnesses, which never lead) of the newest entries, and nobody could win.
        """
        if self.id in self.membership.voters or self.id in self.membership.witnesses:
            return True
        if self.membership_change_pending:
            return self.id in self._membership_at(self._config_entries[-1][0] - 1).voters
        return False

    def _in_lease(self) -> bool:
        """With CheckQuorum, a node that trusts a live leader ignores vote requests."""
        return self._check_quorum and (
            self.state is StateRole.LEADER or self._lease_elapsed < self._election_ticks_min
        )

    def _reset_timers(self) -> None:
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self._draw_election_timeout()

    def _become_follower(self, term: int, leader: str | None) -> None:
        if term != self.term:
            self.term, self.vote = term, None
        if self.state is not StateRole.FOLLOWER or leader != self.leader:
            logger.debug("%s: follower in term %d, leader %s", self.id, term, leader)
        if leader is not None:
            self._lease_elapsed = 0
        elif self.state is StateRole.LEADER:
            self._lease_elapsed = self._election_ticks_min  # our own leadership is no lease
        self.state = StateRole.FOLLOWER
        self.leader = leader
        self._leave_leadership()
        self._reset_timers()

    def _leave_leadership(self) -> None:
        self._progress = {}
        self._departing = {}
        self._votes = {}
        self._transferee = None
        self._reads = ReadIndexTracker()
        self._reads_awaiting_commit = []
        self._lease_until = 0

    def _campaign(self, *, pre_vote: bool, transfer: bool = False) -> None:
        self._leave_leadership()
        self._reset_timers()
        self.leader = None
        if pre_vote:
            self.state = StateRole.PRE_CANDIDATE
            vote_term = self.term + 1
        else:
            self.state = StateRole.CANDIDATE
            self.term += 1
            self.vote = self.id
            vote_term = self.term
        logger.debug("%s: campaigning for term %d (pre_vote=%s)", self.id, vote_term, pre_vote)
        self._votes = {self.id: True}
        if self._tally_votes():
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for peer in sorted(self._voting):
            if peer != self.id:
                self._send(
                    peer,
                    RequestVote(vote_term, self.id, last_index, last_term, pre_vote, transfer),
                )

    def _tally_votes(self) -> bool:
        """Win or lose the running (pre-)election when the votes decide it; returns if decided."""
        voting = self._voting
        granted = sum(1 for peer, yes in self._votes.items() if yes and peer in voting)
        rejected = sum(1 for peer, yes in self._votes.items() if not yes and peer in voting)
        quorum = quorum_size(len(voting))
        if granted >= quorum:
            if self.state is StateRole.PRE_CANDIDATE:
                self._campaign(pre_vote=False)
            else:
                self._become_leader()
            return True
        if rejected > len(voting) - quorum:
            self._become_follower(self.term, None)
            return True
        return False

    def _become_leader(self) -> None:
        logger.info("%s: leader in term %d", self.id, self.term)
        self._leave_leadership()
        self._reset_timers()
        self.state = StateRole.LEADER
        self.leader = self.id
        next_index = self.log.last_index() + 1
        for peer in sorted(members(self.membership) - {self.id}):
            self._add_progress(peer, next_index)
        # A no-op of our own term lets earlier entries commit (Raft paper section 5.4.2).
        self.log.append([Entry(next_index, self.term, EntryKind.NOOP)])
        self._broadcast_append(send_empty=True)
        self._witness_hands_over()

    def _witness_hands_over(self) -> None:
        """A witness that leads does so only to bring a data voter up to date and hand it the
        leadership (TiKV's witness design): with 2 data voters and a witness, the survivor of a
        leader's death may lack entries only the witness has, so the witness refuses it its
        vote, and without this nobody could win. It serves no client, sends no snapshot (it has
        no state), and transfers to the most caught-up data voter, again after each timeout."""
        if self.member_role is not MemberRole.WITNESS or self._transferee is not None:
            return
        target = self.transfer_candidate()
        if target is not None:
            self.transfer_leadership(target)

    def _add_progress(self, peer: str, next_index: int) -> None:
        progress = Progress(next_index, self._max_inflight)
        progress.recent_active = True
        self._progress[peer] = progress

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._election_ticks_min:
            self._election_elapsed = 0
            if self._check_quorum and (heard := self._recently_active()) < quorum_size(
                len(self._voting)
            ):
                self.step_down_reason = (
                    f"CheckQuorum in term {self.term}: heard from {heard} of "
                    f"{len(self._voting)} voting members within an election timeout"
                )
                logger.info("%s: stepping down: %s", self.id, self.step_down_reason)
                self._become_follower(self.term, None)
                return
        if self._transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self._election_ticks_min:
                logger.info("%s: leadership transfer to %s timed out", self.id, self._transferee)
                self._transferee = None
                self._witness_hands_over()
        if self._heartbeat_elapsed >= self._heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()
        self._announce_commit()
        if self._departing:
            self._forget_departed()

    def _forget_departed(self) -> None:
        """Stop sending to removed members once they were told the commit of their removal."""
        for peer, removed_at in list(self._departing.items()):
            if self._progress[peer].commit_sent >= removed_at:
                del self._departing[peer], self._progress[peer]

    def _announce_commit(self) -> None:
        """Tell followers the commit index that no AppendEntries has carried to them yet.

        Once per tick rather than on every commit: under load the next entries carry it anyway,
        and when idle this halves the messages (and follower Ready rounds) per write. The client
        waits only for the leader's commit, so nobody waits for this.
        """
        commit = self.log.commit
        for peer, progress in self._progress.items():
            if (
                progress.commit_sent < commit
                and progress.state is ProgressState.REPLICATE
                and progress.match >= commit
            ):
                self._send_append(peer, progress, send_empty=True)

    def _recently_active(self) -> int:
        """The voting members heard from since the last check (this node counts), and a new
        period starts."""
        active = 0
        for peer in self._voting:
            progress = self._progress.get(peer)
            if peer == self.id or (progress is not None and progress.recent_active):
                active += 1
        for progress in self._progress.values():
            progress.recent_active = False
        return active

    # ------------------------------------------------------------------ membership

    def _membership_at(self, index: int) -> Membership:
        membership = self.log.snapshot.membership
        for config_index, config in self._config_entries:
            if config_index > index:
                break
            membership = config
        return membership

    def _refresh_membership(self) -> None:
        latest = (
            self._config_entries[-1][1] if self._config_entries else self.log.snapshot.membership
        )
        if latest != self.membership or not self._voting:
            self._set_membership(latest)

    def _set_membership(self, membership: Membership) -> None:
        self.membership = membership
        self._voting = voting_members(membership)
        if self.state is not StateRole.LEADER:
            return
        wanted = members(membership) - {self.id}
        for peer in wanted & self._departing.keys():  # added back before it was told
            del self._departing[peer]
        for peer in list(self._progress):
            if peer not in wanted and peer not in self._departing:
                del self._progress[peer]
        for peer in sorted(wanted - self._progress.keys()):
            self._add_progress(peer, self.log.last_index() + 1)
        if self._transferee is not None and role_of(membership, self._transferee) is not (
            MemberRole.VOTER
        ):
            self._transferee = None

    # ------------------------------------------------------------------ replication (leader)

    def _check_can_propose(self) -> None:
        if self.state is not StateRole.LEADER:
            raise NotLeader(self.leader)
        if self._transferee is not None:
            raise NotLeader(self._transferee)
        if self.member_role is MemberRole.WITNESS:
            raise NotLeader(None)  # a witness leads only to hand over: it never serves

    def _committed_in_term(self) -> bool:
        return self.log.term_at(self.log.commit) == self.term

    def _broadcast_append(self, *, send_empty: bool) -> None:
        """Send every follower what it lacks, filling each in-flight window (pipelining)."""
        for peer, progress in self._progress.items():
            if self._send_append(peer, progress, send_empty=send_empty):
                while self._send_append(peer, progress, send_empty=False):
                    pass

    def _send_append(self, peer: str, progress: Progress, *, send_empty: bool) -> bool:
        """Send `peer` what it lacks (or a snapshot); returns whether anything was sent."""
        if progress.is_paused():
            return False
        log = self.log
        prev_index = progress.next - 1
        prev_term = log.term_at(prev_index)
        if prev_term is None:
            if self.member_role is MemberRole.WITNESS:
                return False  # it has no state to send: this follower waits for a data leader
            progress.become_snapshot(log.snapshot.index)
            self._send_snapshot_chunk(peer, progress)
            return True
        if progress.next <= log.last_index():
            entries = log.slice(progress.next, self._max_append_entries, self._max_append_bytes)
            progress.sent_entries(entries[-1].index)
        elif send_empty:
            entries = []
            if progress.state is ProgressState.PROBE:
                progress.probe_sent = True
        else:
            return False
        self._messages.append(
            (
                peer,
                AppendEntries(
                    self.term, self.id, prev_index, prev_term, tuple(entries), log.commit
                ),
            )
        )
        # A follower takes the commit index only as far as the entries it got reach.
        progress.commit_sent = max(progress.commit_sent, min(log.commit, prev_index + len(entries)))
        return True

    def _send_snapshot_chunk(self, peer: str, progress: Progress) -> None:
        data, offset = self._snapshot_data, progress.snapshot_offset
        members = self.log.snapshot.membership
        names = (*members.voters, *members.learners, *members.witnesses)
        size = snapshot_chunk_limit(
            self._max_message_bytes, self._snapshot_chunk_bytes, membership_bytes(names)
        )
        chunk = data[offset : offset + size]
        done = offset + len(chunk) >= len(data)
        self._send(
            peer, InstallSnapshot(self.term, self.id, self.log.snapshot, offset, chunk, done)
        )

    def _broadcast_heartbeat(self) -> None:
        round_number = self._reads.start_round(self._lease_clock())
        commit = self.log.commit
        for peer, progress in self._progress.items():
            told = min(progress.match, commit)
            self._send(peer, Heartbeat(self.term, self.id, told, round_number))
            progress.commit_sent = max(progress.commit_sent, told)
            if progress.state is ProgressState.SNAPSHOT:
                self._send_snapshot_chunk(peer, progress)  # in case the last chunk was lost
        self._confirm_reads()

    def _handle_append_response(self, message: AppendResponse) -> None:
        progress = self._progress.get(message.sender)
        if progress is None or self.state is not StateRole.LEADER:
            return
        progress.recent_active = True
        if not message.success:
            self._handle_rejection(message.sender, progress, message)
            return
        was_paused = progress.is_paused()
        if progress.update_match(message.index):
            if progress.state is ProgressState.PROBE or (
                progress.state is ProgressState.SNAPSHOT
                and progress.match >= progress.pending_snapshot
            ):
                progress.become_replicate()
            if self._maybe_commit():
                self._after_commit()
                if self.state is not StateRole.LEADER:
                    return
            elif was_paused:
                # It may have missed commit announcements while paused: tell it now.
                self._send_append(message.sender, progress, send_empty=True)
        while self._send_append(message.sender, progress, send_empty=False):
            pass
        if message.sender == self._transferee and progress.match == self.log.last_index():
            self._send(message.sender, TimeoutNow(self.term, self.id))

    def _handle_rejection(self, peer: str, progress: Progress, message: AppendResponse) -> None:
        if progress.state is ProgressState.SNAPSHOT:
            return
        if progress.state is ProgressState.REPLICATE and message.index <= progress.match:
            return  # stale: answered before an earlier success
        if progress.state is ProgressState.PROBE and message.index != progress.next - 1:
            return  # stale: not the probe in flight
        next_index = message.conflict_index
        if message.conflict_term:
            last_of_term = self.log.last_index_of_term(message.conflict_term)
            if last_of_term is not None:
                next_index = last_of_term + 1
        progress.become_probe()
        progress.next = max(progress.match + 1, min(next_index, message.index))
        self._send_append(peer, progress, send_empty=True)

    def _handle_heartbeat_response(self, message: HeartbeatResponse) -> None:
        progress = self._progress.get(message.sender)
        if progress is None or self.state is not StateRole.LEADER:
            return
        progress.recent_active = True
        progress.probe_sent = False
        if progress.state is ProgressState.REPLICATE and progress.is_paused():
            progress.inflight.popleft()  # let one more through in case an append was lost
        if progress.match < self.log.last_index():
            self._send_append(message.sender, progress, send_empty=True)
        self._reads.acknowledge(message.sender, message.round)
        self._confirm_reads()

    def _handle_snapshot_response(self, message: SnapshotResponse) -> None:
        progress = self._progress.get(message.sender)
        if (
            progress is None
            or progress.state is not ProgressState.SNAPSHOT
            or message.snapshot_index != progress.pending_snapshot
        ):
            return
        progress.recent_active = True
        if message.next_offset != progress.snapshot_offset and message.next_offset <= len(
            self._snapshot_data
        ):
            progress.snapshot_offset = message.next_offset
            self._send_snapshot_chunk(message.sender, progress)

    def _maybe_commit(self) -> bool:
        """Commit what a quorum of the voting set stores, if it is of the current term.

        Entries of earlier terms are never committed by counting replicas (Raft paper Figure 8);
        they commit with the first entry of this term.
        """
        log = self.log
        matches = []
        for member in self._voting:
            if member == self.id:
                matches.append(log.stable_index)
            else:
                progress = self._progress.get(member)
                matches.append(progress.match if progress is not None else 0)
        index = quorum_index(matches)
        if index > log.commit and log.term_at(index) == self.term:
            log.commit = index
            return True
        return False

    def _after_commit(self) -> None:
        """What a commit unblocks. Followers learn the new index from the next AppendEntries or
        from `_announce_commit` on the next tick."""
        if self._reads_awaiting_commit and self._committed_in_term():
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for context in waiting:
                self._start_read(context)
        removed = self.id not in self._voting
        if removed and (not self._config_entries or self._config_entries[-1][0] <= self.log.commit):
            self._step_down_removed()

    def _step_down_removed(self) -> None:
        """Our removal committed: hand over to an up-to-date voter and stop leading."""
        logger.info("%s: removed from the voting set, stepping down", self.id)
        last = self.log.last_index()
        successor = next(
            (
                peer
                for peer in sorted(self.membership.voters)
                if (progress := self._progress.get(peer)) is not None and progress.match == last
            ),
            None,
        )
        self._broadcast_append(send_empty=True)  # let everybody learn the final commit index
        if successor is not None:
            self._send(successor, TimeoutNow(self.term, self.id))
        self._become_follower(self.term, None)

    # ------------------------------------------------------------------ reads

    def _start_read(self, context: bytes) -> None:
        if self._lease_reads and self._now < self._lease_until:
            self._read_states.append(ReadState(context, self.log.commit))
            return
        round_number = self._reads.start_round(self._lease_clock())
        self._reads.add_read(round_number, context, self.log.commit)
        commit = self.log.commit
        for peer, progress in self._progress.items():
            if peer in self._voting:
                self._send(
                    peer, Heartbeat(self.term, self.id, min(progress.match, commit), round_number)
                )
        self._confirm_reads()

    def _lease_clock(self) -> int | None:
        """The tick a confirmation round starts at, remembered only when leases need it."""
        return self._now if self._lease_reads else None

    def _confirm_reads(self) -> None:
        confirmed = self._reads.confirmed_round(self._voting, self.id)
        self._read_states.extend(self._reads.release(confirmed))
        if self._lease_reads:
            started = self._reads.round_started_at(confirmed)
            if started is not None:
                self._lease_until = max(self._lease_until, started + self._lease_ticks)

    # ------------------------------------------------------------------ follower side

    def _follow(self, leader: str) -> None:
        if self.state is not StateRole.FOLLOWER:
            self._become_follower(self.term, leader)
        self.leader = leader
        self._election_elapsed = 0
        self._lease_elapsed = 0

    def _handle_append(self, message: AppendEntries) -> None:
        if self.state is StateRole.LEADER:
            return  # impossible in a correct cluster: one leader per term
        self._follow(message.sender)
        log = self.log
        if message.prev_index < log.commit:
            self._reply_append(message.sender, True, log.commit)
            return
        if log.term_at(message.prev_index) != message.prev_term:
            self._reject_append(message)
            return
        old_last = log.last_index()
        try:
            truncated_at = log.merge(message.prev_index, message.entries)
        except CommittedEntryConflict as error:
            logger.error("%s: ignoring AppendEntries from %s: %s", self.id, message.sender, error)
            return
        if truncated_at is not None:
            self._config_entries = [c for c in self._config_entries if c[0] < truncated_at]
        appended_from = truncated_at if truncated_at is not None else old_last + 1
        start = max(appended_from - message.prev_index - 1, 0)
        configs = [
            (entry.index, decode_membership(entry.data))
            for entry in message.entries[start:]
            if entry.kind is EntryKind.CONFIG
        ]
        if configs or truncated_at is not None:
            self._config_entries.extend(configs)
            self._refresh_membership()
        last_new = message.prev_index + len(message.entries)
        log.commit_to(min(message.commit, last_new))
        self._reply_append(message.sender, True, last_new)

    def _reject_append(self, message: AppendEntries) -> None:
        log = self.log
        if message.prev_index > log.last_index():
            conflict_index, conflict_term = log.last_index() + 1, 0
        else:
            conflict_term = log.term_at(message.prev_index) or 0
            conflict_index = log.first_index_of_term(conflict_term)
        self._send(
            message.sender,
            AppendResponse(
                self.term, self.id, False, message.prev_index, conflict_index, conflict_term
            ),
        )

    def _reply_append(self, leader: str, success: bool, index: int) -> None:
        self._messages.append((leader, AppendResponse(self.term, self.id, success, index, 0, 0)))

    def _handle_heartbeat(self, message: Heartbeat) -> None:
        if self.state is StateRole.LEADER:
            return
        self._follow(message.sender)
        self.log.commit_to(min(message.commit, self.log.last_index()))
        self._send(message.sender, HeartbeatResponse(self.term, self.id, message.round))

    def _handle_snapshot(self, message: InstallSnapshot) -> None:
        if self.state is StateRole.LEADER:
            return
        self._follow(message.sender)
        meta = message.meta
        if meta.index <= self.log.commit:
            self._incoming_snapshot = None
            self._reply_append(message.sender, True, self.log.commit)
            return
        incoming = self._incoming_snapshot
        if incoming is None or incoming[0] != meta:
            incoming = None
            if message.offset == 0:
                incoming = self._incoming_snapshot = (meta, bytearray())
        received = len(incoming[1]) if incoming is not None else 0
        if incoming is None or message.offset != received:
            self._send(message.sender, SnapshotResponse(self.term, self.id, meta.index, received))
            return
        incoming[1].extend(message.data)
        if not message.done:
            self._send(
                message.sender,
                SnapshotResponse(self.term, self.id, meta.index, len(incoming[1])),
            )
            return
        self._incoming_snapshot = None
        self._install_snapshot(meta, bytes(incoming[1]))
        self._reply_append(message.sender, True, meta.index)

    def _install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        if self.log.term_at(meta.index) == meta.term:
            self.log.commit_to(meta.index)  # our log already holds it: nothing to replace
            return
        logger.info("%s: installing snapshot at %d (term %d)", self.id, meta.index, meta.term)
        self.log.restore(meta, data)
        self._applied_bytes = 0
        # A request the driver has not served yet is moot: it may find nothing left to compact,
        # and only compact() would clear it, so no snapshot would ever be asked for again.
        self._snapshot_requested = False
        self._draw_snapshot_stretch()
        self._snapshot_data = data
        self._config_entries = []
        self._refresh_membership()

    # ------------------------------------------------------------------ votes

    def _handle_vote_request(self, message: RequestVote) -> None:
        can_vote = (
            self.vote == message.sender
            or (self.vote is None and self.leader is None)
            or (message.pre_vote and message.term > self.term)
        )
        if not can_vote:
            reason = (
                f"already voted for {self.vote}"
                if self.vote is not None
                else f"following leader {self.leader}"
            )
            granted = False
        elif not self.log.is_up_to_date(message.last_index, message.last_term):
            reason, granted = "candidate log is behind ours", False
        else:
            reason, granted = "granted", True
        if granted and not message.pre_vote:
            self.vote = message.sender
            self._election_elapsed = 0
        self._audit(message, granted, reason)
        term = message.term if granted else self.term
        self._send(message.sender, VoteResponse(term, self.id, granted, message.pre_vote))

    def _answer_stale(self, message: Message) -> None:
        """A message from an older term: tell a stale leader or candidate about our term."""
        kind = type(message)
        if kind is RequestVote:
            self._audit(message, False, "stale term")
            self._send(message.sender, VoteResponse(self.term, self.id, False, message.pre_vote))
        elif kind in (AppendEntries, Heartbeat) and (self._check_quorum or self._pre_vote):
            # With CheckQuorum/PreVote our higher term may never reach the stale leader
            # otherwise, and it would keep a minority of followers from electing anyone.
            self._send(message.sender, AppendResponse(self.term, self.id, False, 0, 0, 0))

    def _handle_vote_response(self, message: VoteResponse) -> None:
        if self.state is StateRole.PRE_CANDIDATE:
            if not message.pre_vote or (message.granted and message.term != self.term + 1):
                return
        elif self.state is StateRole.CANDIDATE:
            if message.pre_vote:
                return
        else:
            return
        self._votes[message.sender] = message.granted
        self._tally_votes()

    def _audit(self, message: RequestVote, granted: bool, reason: str) -> None:
        self._votes_recorded += 1
        self._vote_audit.append(
            VoteRecord(message.term, message.sender, granted, message.pre_vote, reason)
        )

    # ------------------------------------------------------------------ helpers

    def _send(self, to: str, message: Message) -> None:
        self._messages.append((to, message))

    def _snapshot_due(self) -> bool:
        """After `snapshot_threshold` entries, or `snapshot_threshold_bytes` of them but never
        fewer bytes than the last snapshot held: a snapshot costs time in proportion to the
        state, so this keeps that cost in proportion to the writes however large the state grows
        (the log then holds up to about one state's worth of bytes). Both stretched by this
        node's draw (`snapshot_jitter_percent`)."""
        log = self.log
        stretch = self._snapshot_stretch_percent
        entries_due = self._snapshot_threshold * stretch // 100
        bytes_due = max(self._snapshot_threshold_bytes, len(self._snapshot_data)) * stretch // 100
        return not self._snapshot_requested and (
            log.applied - log.snapshot.index >= entries_due or self._applied_bytes >= bytes_due
        )

    def _draw_snapshot_stretch(self) -> None:
        if self._snapshot_jitter_percent:
            self._snapshot_stretch_percent = self._rng.randint(
                100, 100 + self._snapshot_jitter_percent
            )
