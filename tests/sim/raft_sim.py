"""A deterministic, seeded simulator for the Raft core: drivers, a faulty network, invariants.

One seed fixes everything: cluster shape, faults, client load; `run_seed` raises on violations.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass

import msgpack

from caddy.errors import NotLeader
from caddy.raft.codec import from_wire, to_wire
from caddy.raft.driver import RaftDriver, ReadyHandler, write_snapshot_file
from caddy.raft.errors import RequestRejected
from caddy.raft.membership import ChangeKind, MemberRole, members, role_of
from caddy.raft.memory_storage import MemoryLogStorage
from caddy.raft.messages import InstallSnapshot, Message
from caddy.raft.node import RaftNode
from caddy.raft.read_index import ReadState
from caddy.raft.ready import SEND_BEFORE_PERSIST, Ready, Snapshot, StateRole
from caddy.raft.types import Entry, EntryKind, Membership, SnapshotMeta


class InvariantViolation(AssertionError):
    """A safety or liveness property failed."""


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """RaftNode keyword settings shared by every node of one simulation."""

    heartbeat_ticks: int = 2
    election_ticks_min: int = 10
    election_ticks_max: int = 20
    max_append_entries: int = 8
    max_append_bytes: int = 256
    max_inflight: int = 4
    snapshot_threshold: int = 40
    snapshot_threshold_bytes: int = 1 << 20
    snapshot_jitter_percent: int = 0
    pre_vote: bool = True
    check_quorum: bool = True
    lease_reads: bool = False
    snapshot_chunk_bytes: int = 64

    def as_kwargs(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


class StateMachine:
    """A hash chain over applied entries: equal chains at an index mean equal applied histories."""

    __slots__ = ("applied_index", "chain")

    def __init__(self, applied_index: int = 0, chain: bytes = b"") -> None:
        self.applied_index = applied_index
        self.chain = chain

    def apply(self, entry: Entry) -> None:
        if entry.index != self.applied_index + 1:
            raise InvariantViolation(f"applied {entry.index} after {self.applied_index}")
        digest = hashlib.blake2b(self.chain, digest_size=16)
        digest.update(bytes([int(entry.kind)]))
        digest.update(entry.data)
        self.chain = digest.digest()
        self.applied_index = entry.index

    def snapshot(self) -> bytes:
        return msgpack.packb([self.applied_index, self.chain])

    def snapshot_view(self) -> Callable[[], bytes]:
        """The bytes of `snapshot()` as of now, made later (as the node's writer thread does)."""
        return StateMachine(self.applied_index, self.chain).snapshot

    @classmethod
    def restore(cls, data: bytes | None) -> StateMachine:
        if not data:
            return cls()
        applied_index, chain = msgpack.unpackb(data)
        return cls(applied_index, chain)


class SimulatedCrash(Exception):
    """Raised out of a node's Ready handling where the world made it crash."""


class SimNode(ReadyHandler):
    """One node as the real one runs: a RaftNode over MemoryLogStorage, driven by `RaftDriver`,
    with its own snapshots written later by `SimSnapshotWriter` (as by the node's writer thread).
    The world injects crashes at chosen points of a Ready (see `World.crash_point`)."""

    def __init__(
        self, world: World, node_id: str, bootstrap: Membership, settings: NodeSettings, seed: int
    ):
        self.world = world
        self.id = node_id
        self.bootstrap = bootstrap
        self.settings = settings
        self.storage = MemoryLogStorage()
        self.rng = random.Random(seed)
        # Its own stream, so that snapshot timing leaves each seed's main schedule as it was.
        self.writer_rng = random.Random(f"{world.seed}-{node_id}-writer")
        self.core: RaftNode | None = None
        self.driver: RaftDriver | None = None
        self.writer: SimSnapshotWriter | None = None
        self.sm = world.machine_class()
        self.incarnation = 0
        self._crash_at: int | None = None
        self._late_messages = 0  # messages of the current Ready sent after persisting
        self._late_sent: int | None = None  # None until the Ready is persisted
        self.snapshot_asked: int | None = None  # a snapshot request no write has started for
        self.snapshot_due_since: tuple[int, int] | None = None  # (snapshot index, step)
        self.start()

    @property
    def alive(self) -> bool:
        return self.core is not None

    def start(self) -> None:
        recovered = self.storage.load()
        self.core = RaftNode(
            self.id,
            self.bootstrap,
            storage_state=recovered,
            rng=self.rng,
            **self.settings.as_kwargs(),
        )
        self.sm = self.world.machine_class.restore(recovered.snapshot_data)
        self.snapshot_asked = self.snapshot_due_since = None
        self.writer = SimSnapshotWriter(self)
        self.driver = RaftDriver(
            self.core,
            self.storage,
            self,
            writer=self.writer,
            send_before_persist=self.world.send_before_persist,
        )
        self.incarnation += 1

    def crash(self, keep_unsynced: int = 0) -> None:
        if self.writer is not None and self.writer.written_unreported:
            self.world.interrupted_snapshot_writes += 1
        self.storage.crash(keep_unsynced)
        self.core = self.driver = self.writer = None

    def handle_ready(self, faults: bool) -> None:
        """Carry out one Ready, unless the world makes the node crash part way through."""
        world = self.world
        world.note_commit(self)
        self._faults = faults
        try:
            self.driver.handle_ready()
        except SimulatedCrash:
            return
        if self._crash_at == 1:  # nothing was sent after persisting: crash at the Ready's end
            self.crash()
        elif self._crash_at == 2:
            self.crash(world.rng.randint(0, self.storage.unsynced_writes))

    # ----- ReadyHandler --------------------------------------------------------------------

    def taken(self, ready: Ready) -> None:
        world = self.world
        world.check_ready(self, ready)
        if ready.snapshot_request is not None:
            self.snapshot_asked = ready.snapshot_request  # the driver's to serve
            if not self.writer.idle:
                world.snapshots_asked_while_writing += 1
        self._crash_at = world.crash_point(self, ready) if self._faults else None
        early = SEND_BEFORE_PERSIST if world.send_before_persist else ()
        self._late_messages = sum(1 for _, m in ready.messages if not isinstance(m, early))
        self._late_sent = None

    def before_sync(self, ready: Ready) -> None:
        if self._crash_at == 0:  # written but not synced: a random prefix of the writes survives
            self.crash(self.world.rng.randint(0, self.storage.unsynced_writes))
            raise SimulatedCrash
        self._late_sent = 0

    def send(self, to: str, message: Message) -> None:
        if isinstance(message, InstallSnapshot) and self.core.member_role is MemberRole.WITNESS:
            raise InvariantViolation(f"witness {self.id} sends a snapshot (it keeps no state)")
        if self._late_sent is not None:
            if self._crash_at == 1 and self._late_sent == self._late_messages // 2:
                self.crash()
                raise SimulatedCrash
            self._late_sent += 1
        self.world.network.send(self.id, to, message)

    def restore(self, snapshot: Snapshot) -> None:
        if self.core.member_role is MemberRole.WITNESS:
            raise InvariantViolation(f"witness {self.id} installs a state machine snapshot")
        self.world.snapshots_installed += 1
        self.sm = self.world.machine_class.restore(snapshot.data)
        self.world.check_installed(self)

    def apply(self, entries: list[Entry]) -> None:
        for entry in entries:
            self.sm.apply(entry)
            self.world.check_applied(self, entry)

    def read_states(self, states: list[ReadState]) -> None:
        for read in states:
            self.world.client.read_served(self, read)

    def snapshot_view(self) -> Callable[[], bytes]:
        if self.sm.applied_index != self.core.applied_index:
            raise InvariantViolation(
                f"{self.id} snapshots at {self.sm.applied_index}, not the applied index"
            )
        return self.sm.snapshot_view()

    def snapshot_taken(self, meta: SnapshotMeta) -> None:
        self.world.snapshots_taken += 1


class SimSnapshotWriter:
    """A node's snapshot writer thread, in simulated steps: the file is written some steps after
    the view was taken, and the Raft thread hears of it some steps after that (sometimes many,
    so that leaders' snapshots and new requests arrive meanwhile). A crash in between leaves a
    durable file with an uncut log, which the next start completes. A write still running when
    `finish` is not called would land later, over a newer snapshot file, as a thread's would."""

    WRITE_DELAYS = (0, 0, 1, 3, 10)
    REPORT_DELAYS = (0, 1, 5, 20)

    def __init__(self, node: SimNode) -> None:
        self._node = node
        self._job: list | None = None  # [meta, view, write at, data once written, report at]

    def start(self, meta: SnapshotMeta, view: Callable[[], bytes]) -> None:
        node = self._node
        if node.snapshot_asked is not None and meta.index >= node.snapshot_asked:
            node.snapshot_asked = None
        rng, now = node.writer_rng, node.world.now
        self._job = [meta, view, now + rng.choice(self.WRITE_DELAYS), None, None]

    def finish(self) -> None:
        if self._job is not None and self._job[3] is None:
            self._node.world.own_writes_overtaken += 1
            self._write(self._job)

    def step(self, now: int) -> None:
        job = self._job
        if job is None:
            return
        if job[3] is None and now >= job[2]:
            self._write(job)
        if job[3] is not None and now >= job[4]:
            self._job = None
            self._node.driver.snapshot_written(job[0], job[3])

    @property
    def idle(self) -> bool:
        return self._job is None

    @property
    def written_unreported(self) -> bool:
        return self._job is not None and self._job[3] is not None

    def _write(self, job: list) -> None:
        node = self._node
        job[3] = write_snapshot_file(node.storage, job[0], job[1])
        job[4] = node.world.now + node.writer_rng.choice(self.REPORT_DELAYS)
        node.world.log(f"{node.id} wrote snapshot {job[0].index}")


@dataclass(slots=True)
class InFlight:
    """A message on its way."""

    sender: str
    to: str
    message: Message


class Network:
    """Seeded message delivery with drops, duplicates, delays (hence reordering) and cut links."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.now = 0
        self.queue: list[tuple[int, int, InFlight]] = []  # (deliver at, sequence, flight)
        self.sequence = 0
        self.blocked: set[tuple[str, str]] = set()
        self.drop_rate = 0.0
        self.duplicate_rate = 0.0
        self.max_delay = 1
        self.codec_sample_rate = 0.1

    def send(self, sender: str, to: str, message: Message) -> None:
        rng = self.rng
        if rng.random() < self.drop_rate:
            return
        copies = 2 if rng.random() < self.duplicate_rate else 1
        for _ in range(copies):
            if rng.random() < self.codec_sample_rate:
                message = from_wire(message.kind, to_wire(message))
            self.sequence += 1
            delay = rng.randint(1, self.max_delay)
            flight = InFlight(sender, to, message)
            heapq.heappush(self.queue, (self.now + delay, self.sequence, flight))

    def due(self) -> list[InFlight]:
        ready = []
        while self.queue and self.queue[0][0] <= self.now:
            ready.append(heapq.heappop(self.queue)[2])
        return ready

    def link_up(self, sender: str, to: str) -> bool:
        return (sender, to) not in self.blocked


class Client:
    """Proposes unique commands to whoever leads, retries, records acknowledgements and reads."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.counter = 0
        # command -> (node, incarnation, index, term) of its latest proposal
        self.pending: dict[bytes, tuple[str, int, int, int]] = {}
        self.acked: dict[bytes, int] = {}  # command -> index it was applied at on its leader
        self.max_acked_index = 0
        self.reads: dict[bytes, int] = {}  # read context -> max acked index when issued
        self.reads_served = 0

    def propose_new(self) -> None:
        self.counter += 1
        command = f"c{self.counter}".encode()
        self.pending[command] = ("", 0, 0, 0)
        leader = self.world.any_leader()
        if leader is not None:
            self.propose(leader, command)

    def propose(self, leader: SimNode, command: bytes) -> None:
        try:
            index, term = leader.core.propose(command)
        except NotLeader:
            return
        self.pending[command] = (leader.id, leader.incarnation, index, term)

    def retry_lost(self) -> None:
        """Propose again what can no longer commit as proposed: its leader lost leadership,
        crashed, or applied something else at that index."""
        leader = self.world.any_leader()
        if leader is None:
            return
        nodes = self.world.nodes
        for command, (node_id, incarnation, index, term) in list(self.pending.items()):
            node = nodes.get(node_id)
            lost = (
                node is None
                or node.incarnation != incarnation
                or not node.alive
                or node.core.term != term
                or node.core.state is not StateRole.LEADER
                or node.sm.applied_index >= index
            )
            if lost:
                self.propose(leader, command)

    def entry_applied(self, node: SimNode, entry: Entry) -> None:
        proposal = self.pending.get(entry.data)
        if proposal is None:
            return
        if proposal == (node.id, node.incarnation, entry.index, entry.term):
            del self.pending[entry.data]
            self.acked[entry.data] = entry.index
            self.max_acked_index = max(self.max_acked_index, entry.index)

    def read(self) -> None:
        leader = self.world.any_leader()
        if leader is None:
            return
        self.counter += 1
        context = f"r{self.counter}".encode()
        try:
            leader.core.read_index(context)
        except NotLeader:
            return
        self.reads[context] = self.max_acked_index

    def read_served(self, node: SimNode, read) -> None:
        """Linearizability: a read must see every write acknowledged before it was issued."""
        floor = self.reads.pop(read.context, None)
        if floor is None:
            return
        if read.index < floor:
            raise InvariantViolation(
                f"read {read.context!r} on {node.id} at index {read.index} misses acked {floor}"
            )
        self.reads_served += 1


@dataclass(frozen=True, slots=True)
class Scenario:
    """The cluster shape a seed picked."""

    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()
    witnesses: tuple[str, ...] = ()
    spares: tuple[str, ...] = ()  # running but not members: membership changes may add them

    @property
    def membership(self) -> Membership:
        return Membership(
            frozenset(self.voters), frozenset(self.learners), frozenset(self.witnesses)
        )

    @property
    def all_ids(self) -> tuple[str, ...]:
        return self.voters + self.learners + self.witnesses + self.spares


SCENARIOS = (
    Scenario(("n1", "n2", "n3")),
    Scenario(("n1", "n2", "n3", "n4", "n5")),
    Scenario(("n1", "n2", "n3", "n4", "n5", "n6", "n7")),
    Scenario(("n1", "n2", "n3"), learners=("n4", "n5")),
    Scenario(("n1", "n2"), witnesses=("w1",)),
    Scenario(("n1", "n2", "n3", "n4"), witnesses=("w1",)),
    Scenario(("n1", "n2", "n3"), learners=("n4",), witnesses=("w1",)),
    Scenario(("n1", "n2", "n3"), spares=("n4", "n5")),
)


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Per-step probabilities of each fault kind, and how long a crashed node stays down."""

    partition: float
    crash: float
    leader: float  # crash or isolate whoever leads: forces elections amid replication
    on_commit: float  # ... right after its commit index moved (a moment that matters)
    membership: float  # propose a membership change (in seeds with membership churn)
    downtime: tuple[int, int]


FAULT_PROFILES = (
    FaultRates(0.02, crash=0.01, leader=0.0, on_commit=0.0, membership=0.01, downtime=(5, 60)),
    FaultRates(0.04, crash=0.02, leader=0.02, on_commit=0.3, membership=0.02, downtime=(2, 30)),
    FaultRates(0.08, crash=0.04, leader=0.05, on_commit=0.6, membership=0.05, downtime=(1, 15)),
)


@dataclass(slots=True)
class Schedule:
    """How long and how rough one run is."""

    fault_steps: int = 500
    heal_steps: int = 300
    propose_rate: float = 0.3
    read_rate: float = 0.05


class World:
    """The simulation of one seed: nodes, network, client, faults and the invariant checks.
    A subclass may replicate another state machine or run another client (`machine_class`,
    `client_class`)."""

    machine_class: type[StateMachine] = StateMachine
    client_class: type[Client] = Client
    scenarios: tuple[Scenario, ...] = SCENARIOS  # the cluster shapes a seed picks from

    def __init__(self, seed: int, schedule: Schedule | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        rng = self.rng
        self.schedule = schedule or Schedule()
        self.scenario = self.scenarios[rng.randrange(len(self.scenarios))]
        check_quorum = rng.random() < 0.8
        self.settings = NodeSettings(
            max_append_entries=rng.choice((1, 4, 8, 64)),
            max_inflight=rng.choice((1, 4, 16)),
            snapshot_threshold=rng.choice((15, 40, 10_000)),
            snapshot_threshold_bytes=rng.choice((60, 1 << 20)),
            # Drawn apart, so the main stream (and each seed's schedule) stays as it was.
            snapshot_jitter_percent=random.Random(f"{seed}-jitter").choice((0, 50)),
            pre_vote=rng.random() < 0.8,
            check_quorum=check_quorum,
            lease_reads=check_quorum and rng.random() < 0.3,
            snapshot_chunk_bytes=rng.choice((8, 64, 1 << 20)),
        )
        self.membership_churn = rng.random() < 0.4
        self.fault_rates = FAULT_PROFILES[rng.randrange(len(FAULT_PROFILES))]
        self.leader_seen: tuple[str, int, int] = ("", 0, 0)  # (leader, term, commit index)
        self.send_before_persist = rng.random() < 0.5
        self.network = Network(rng)
        self.now = 0
        bootstrap = self.scenario.membership
        self.nodes = {
            node_id: SimNode(
                self,
                node_id,
                bootstrap if node_id not in self.scenario.spares else Membership(),
                self.settings,
                rng.randrange(1 << 30),
            )
            for node_id in self.scenario.all_ids
        }
        self.client = self.client_class(self)
        self.down_until: dict[str, int] = {}
        self.flapping: tuple[set[tuple[str, str]], int] | None = None
        # Global knowledge for the invariants.
        self.leader_of_term: dict[int, str] = {}
        self.witness_terms: set[int] = set()  # terms a witness led
        # (index, term) -> (kind, data, term of the entry before): the log matching property
        self.entry_at: dict[tuple[int, int], tuple[int, bytes, int | None]] = {}
        self.applied_chain: dict[int, tuple[bytes, int]] = {}  # index -> (chain, term)
        self.last_commit: dict[str, tuple[int, int]] = {}  # node -> (incarnation, commit)
        # The highest commit index any leader reached: (index, term, voting set it counted).
        self.latest_commit: tuple[int, int, frozenset[str]] = (0, 0, frozenset())
        self.trace: list[str] = []
        self.snapshots_installed = 0
        self.snapshots_taken = 0
        self.interrupted_snapshot_writes = 0  # crashes between a file's write and its report
        self.own_writes_overtaken = 0  # a leader's snapshot came while one was being written
        self.snapshots_asked_while_writing = 0
        self.snapshot_due_entries = (
            self.settings.snapshot_threshold * (100 + self.settings.snapshot_jitter_percent) // 100
        )

    # ------------------------------------------------------------------ helpers

    def live_nodes(self) -> list[SimNode]:
        return [node for node in self.nodes.values() if node.alive]

    def any_leader(self) -> SimNode | None:
        leaders = [node for node in self.live_nodes() if node.core.state is StateRole.LEADER]
        if not leaders:
            return None
        return max(leaders, key=lambda node: node.core.term)

    def log(self, text: str) -> None:
        self.trace.append(f"[{self.now}] {text}")

    # ------------------------------------------------------------------ invariants

    def check_ready(self, node: SimNode, ready) -> None:
        if ready.entries:
            term_before = node.core.log.term_at(ready.entries[0].index - 1)
            self.check_log_matching(node.id, ready.entries, term_before)
            self.check_truncation(node, ready.entries)

    def check_truncation(self, node: SimNode, entries: list[Entry]) -> None:
        """Only a leader of a newer term makes a node drop entries: never an entry of its term."""
        for entry in entries:
            stored = node.storage.stored_term(entry.index)
            if stored is None:
                return
            if stored != entry.term:
                if stored >= node.core.term:
                    raise InvariantViolation(
                        f"{node.id} in term {node.core.term} dropped entry {entry.index} "
                        f"of term {stored}"
                    )
                return

    def check_log_matching(self, node_id: str, entries, term_before: int | None) -> None:
        """Log matching: one content per (index, term), always after the same previous term."""
        for entry in entries:
            key = (entry.index, entry.term)
            content = (int(entry.kind), entry.data, term_before)
            if self.entry_at.setdefault(key, content) != content:
                raise InvariantViolation(f"log matching broken at {key} on {node_id}")
            term_before = entry.term

    def check_applied(self, node: SimNode, entry: Entry) -> None:
        """State machine safety: every node applies the same entry at each index; a witness's
        term (it leads only to hand over) holds nothing but its no-op."""
        if entry.term in self.witness_terms and entry.kind is not EntryKind.NOOP:
            raise InvariantViolation(f"witness-led term {entry.term} holds a {entry.kind.name}")
        known = self.applied_chain.setdefault(entry.index, (node.sm.chain, entry.term))
        if known != (node.sm.chain, entry.term):
            raise InvariantViolation(f"{node.id} applied a different entry at {entry.index}")
        self.client.entry_applied(node, entry)

    def check_installed(self, node: SimNode) -> None:
        known = self.applied_chain.get(node.sm.applied_index)
        if known is not None and known[0] != node.sm.chain:
            raise InvariantViolation(f"{node.id} installed a snapshot that differs from history")

    def note_commit(self, node: SimNode) -> None:
        """Record a leader's new commit index with the voting set that committed it. Called
        before anything can crash the node, so that a commit is never first seen on a later
        leader that merely learned it (and may still hold an older configuration)."""
        core = node.core
        if core.state is StateRole.LEADER and core.commit_index > self.latest_commit[0]:
            self.latest_commit = (
                core.commit_index,
                core.log.term_at(core.commit_index),
                core.membership.voters | core.membership.witnesses,
            )

    def check_step(self) -> None:
        for node in self.live_nodes():
            core = node.core
            self.note_commit(node)
            if core.state is StateRole.LEADER:
                # A voter whose demotion is appended but not committed may still win (as one
                # whose removal is: `RaftNode._promotable`); it steps down once it commits it.
                if core.member_role is MemberRole.LEARNER and not core.membership_change_pending:
                    raise InvariantViolation(f"learner {node.id} leads")
                if core.member_role is MemberRole.WITNESS:
                    self.witness_terms.add(core.term)
                holder = self.leader_of_term.setdefault(core.term, node.id)
                if holder != node.id:
                    raise InvariantViolation(
                        f"two leaders in term {core.term}: {holder}, {node.id}"
                    )
                if core.term not in self._completeness_checked:
                    self._completeness_checked.add(core.term)
                    self.check_leader_completeness(node)
            previous = self.last_commit.get(node.id)
            if (
                previous is not None
                and previous[0] == node.incarnation
                and core.commit_index < previous[1]
            ):
                raise InvariantViolation(f"commit index of {node.id} went down")
            self.last_commit[node.id] = (node.incarnation, core.commit_index)
            if core.applied_index > core.commit_index:
                raise InvariantViolation(f"{node.id} applied beyond its commit index")
            self.check_snapshots(node)
        self.check_commit_durable()

    def check_commit_durable(self) -> None:
        """The latest committed entry stays durable on a quorum of the voting set that
        committed it: crashes lose only unsynced writes, and nobody truncates committed entries."""
        index, term, voting = self.latest_commit
        if not voting:
            return
        holders = sum(
            1 for node_id in voting if self.nodes[node_id].storage.durably_holds(index, term)
        )
        if holders < len(voting) // 2 + 1:
            raise InvariantViolation(f"committed entry {index} is durable on {holders} of {voting}")

    # Steps a node's log may hold a snapshot's worth of applied entries without its snapshot
    # moving: a write and its report take at most 30 (SimSnapshotWriter), and one asked for
    # meanwhile as long again.
    SNAPSHOT_OVERDUE_STEPS = 80

    def check_snapshots(self, node: SimNode) -> None:
        """What the node's own snapshots must keep: a crash keeps everything the node applied
        (a snapshot file the log is cut to is durable, and no older one replaces a newer); the
        stored log keeps no entry the in-memory log compacted (both are cut at once); every
        snapshot the core asks for is taken; a log holding the (most stretched) threshold of
        applied entries past its snapshot soon gets a newer one (the byte threshold is not
        checked: it would cost a sum over the log each step)."""
        log = node.core.log
        base = log.snapshot.index
        applied = log.applied
        if 0 < applied and base <= applied:
            if not node.storage.durably_holds(applied, log.term_at(applied)):
                raise InvariantViolation(f"{node.id} would lose applied entry {applied} in a crash")
        if base and log.pending_snapshot is None and node.storage.stored_term(base) is not None:
            raise InvariantViolation(f"{node.id} still stores entry {base}, which it compacted")
        asked = node.snapshot_asked
        if asked is not None and asked > base and node.writer.idle:
            raise InvariantViolation(f"{node.id} dropped the request for a snapshot at {asked}")
        if applied - base < self.snapshot_due_entries:
            node.snapshot_due_since = None
        elif node.snapshot_due_since is None or node.snapshot_due_since[0] != base:
            node.snapshot_due_since = (base, self.now)
        elif self.now - node.snapshot_due_since[1] > self.SNAPSHOT_OVERDUE_STEPS:
            raise InvariantViolation(
                f"{node.id} holds {applied - base} applied entries past its snapshot {base} "
                f"for {self.now - node.snapshot_due_since[1]} steps"
            )

    _completeness_checked: set[int]

    def check_leader_completeness(self, leader: SimNode) -> None:
        """A new leader's log holds every entry applied anywhere so far."""
        log = leader.core.log
        for index, (_, term) in self.applied_chain.items():
            if index < log.snapshot.index:
                continue
            if log.term_at(index) != term:
                raise InvariantViolation(
                    f"leader {leader.id} of term {leader.core.term} lacks applied entry {index}"
                )

    # ------------------------------------------------------------------ faults

    def inject_faults(self) -> None:
        rng = self.rng
        rates = self.fault_rates
        ids = list(self.nodes)
        if rng.random() < rates.partition:
            self.change_partition(ids)
        if self.flapping is not None:
            links, period = self.flapping
            if self.now % period == 0:
                self.network.blocked ^= links
        if rng.random() < rates.crash:
            self.crash(rng.choice(ids))
        leader = self.any_leader()
        if leader is not None:
            seen = (leader.id, leader.core.term, leader.core.commit_index)
            just_committed = seen[:2] == self.leader_seen[:2] and seen[2] > self.leader_seen[2]
            self.leader_seen = seen
            if rng.random() < rates.leader or (just_committed and rng.random() < rates.on_commit):
                self.fault_leader(leader, ids)
        for node_id, until in list(self.down_until.items()):
            if until <= self.now:
                self.restart(node_id)
        if rng.random() < 0.01:
            self.network.drop_rate = rng.choice((0.0, 0.05, 0.2, 0.5))
            self.network.duplicate_rate = rng.choice((0.0, 0.05, 0.2))
            self.network.max_delay = rng.choice((1, 2, 5, 10))
        if self.membership_churn and rng.random() < rates.membership:
            self.change_membership()
        if rng.random() < 0.003:
            leader = self.any_leader()
            if leader is not None:
                voters = sorted(leader.core.membership.voters - {leader.id})
                if voters:
                    target = rng.choice(voters)
                    self.log(f"transfer {leader.id} -> {target}")
                    leader.core.transfer_leadership(target)

    def fault_leader(self, leader: SimNode, ids: list[str]) -> None:
        """Crash or isolate the leader: elections in the middle of replication."""
        if self.rng.random() < 0.5:
            self.crash(leader.id)
            return
        self.log(f"partition isolate leader {leader.id}")
        self.flapping = None
        self.network.blocked = {
            link
            for other in ids
            if other != leader.id
            for link in ((leader.id, other), (other, leader.id))
        }

    def crash(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.alive and len(self.down_until) < len(self.nodes) // 2 + 1:
            self.log(f"crash {node_id}")
            node.crash(self.rng.randint(0, node.storage.unsynced_writes))
            self.down_until[node_id] = self.now + self.rng.randint(*self.fault_rates.downtime)

    def change_partition(self, ids: list[str]) -> None:
        rng = self.rng
        kind = rng.choice(("heal", "split", "isolate", "asymmetric", "flap", "bridge"))
        self.log(f"partition {kind}")
        self.network.blocked = set()
        self.flapping = None
        if kind == "heal":
            return
        shuffled = ids[:]
        rng.shuffle(shuffled)
        if kind == "isolate":
            side = {shuffled[0]}
        else:
            side = set(shuffled[: rng.randint(1, len(ids) - 1)])
        cut = {(a, b) for a in ids for b in ids if (a in side) != (b in side)}
        if kind == "asymmetric":
            cut = {(a, b) for a, b in cut if a in side}  # the side can't send, still hears
        elif kind == "bridge":
            bridge = shuffled[-1]
            cut = {(a, b) for a, b in cut if bridge not in (a, b)}
        elif kind == "flap":
            self.flapping = (cut, rng.randint(3, 30))
        self.network.blocked = cut

    def restart(self, node_id: str) -> None:
        self.log(f"restart {node_id}")
        del self.down_until[node_id]
        node = self.nodes[node_id]
        durable = node.storage.load()
        last = (durable.snapshot.index if durable.snapshot else 0) + len(durable.entries)
        if durable.hard_state.commit > last:
            raise InvariantViolation(f"{node_id} recovered a commit index beyond its log")
        base_term = durable.snapshot.term if durable.snapshot else 0
        self.check_log_matching(node_id, durable.entries, base_term)
        node.start()

    def change_membership(self) -> None:
        leader = self.any_leader()
        if leader is None:
            return
        rng = self.rng
        membership = leader.core.membership
        node_id = rng.choice(list(self.nodes))
        role = role_of(membership, node_id)
        if role is MemberRole.NONE:
            kind = rng.choice((ChangeKind.ADD_LEARNER, ChangeKind.ADD_VOTER))
        elif role is MemberRole.LEARNER:
            kind = rng.choice((ChangeKind.PROMOTE_LEARNER, ChangeKind.REMOVE_NODE))
        elif role is MemberRole.VOTER and len(membership.voters | membership.witnesses) > 3:
            kind = ChangeKind.REMOVE_NODE
        else:
            return
        try:
            leader.core.change_membership(kind, node_id)
            self.log(f"membership {kind.value} {node_id}")
        except (RequestRejected, NotLeader):
            pass

    def heal(self) -> None:
        self.log("heal")
        self.network.blocked = set()
        self.flapping = None
        self.network.drop_rate = 0.0
        self.network.duplicate_rate = 0.0
        self.network.max_delay = min(self.network.max_delay, 2)
        for node_id in list(self.down_until):
            self.restart(node_id)

    # ------------------------------------------------------------------ running

    def step(self, faults: bool) -> None:
        self.now += 1
        self.network.now = self.now
        rng = self.rng
        if faults:
            self.inject_faults()
        if faults and rng.random() < self.schedule.propose_rate:
            self.client.propose_new()
        if rng.random() < self.schedule.read_rate:
            self.client.read()
        self.client.retry_lost()
        for flight in self.network.due():
            node = self.nodes[flight.to]
            if node.alive and self.network.link_up(flight.sender, flight.to):
                node.core.step(flight.message)
        for node in self.live_nodes():
            node.core.tick()
        for node in self.live_nodes():
            node.writer.step(self.now)
        for node in self.live_nodes():
            for _ in range(8):
                if not node.alive or not node.core.has_ready():
                    break
                node.handle_ready(faults)
        self.check_step()

    def crash_point(self, node: SimNode, ready) -> int | None:
        """Where (if at all) `node` crashes while handling `ready`: 0 before the sync, 1 halfway
        through sending, 2 right after. Readies with a snapshot or a new vote are likelier."""
        rng = self.rng
        rate = self.fault_rates.crash / 4
        if ready.snapshot is not None or (ready.hard_state is not None and ready.must_sync):
            rate *= 10
        if rng.random() >= rate or len(self.down_until) >= len(self.nodes) // 2:
            return None
        crash_at = rng.randint(0, 2)
        self.down_until[node.id] = self.now + rng.randint(*self.fault_rates.downtime)
        self.log(f"crash {node.id} inside ready ({crash_at})")
        return crash_at

    def settled(self) -> bool:
        """A leader of the highest term, nothing pending, every live member caught up."""
        leader = self.any_leader()
        if leader is None or self.client.pending:
            return False
        core = leader.core
        if core.member_role is MemberRole.WITNESS:
            return False  # it leads only until it handed over
        voting = core.membership.voters | core.membership.witnesses
        if core.term < max(node.core.term for node in self.live_nodes() if node.id in voting):
            return False
        if core.commit_index < core.last_index:
            return False
        for node_id in members(core.membership):
            node = self.nodes[node_id]
            if role_of(core.membership, node_id) is MemberRole.WITNESS:
                continue
            if node.sm.applied_index < core.commit_index:
                return False
        return True

    def run(self) -> None:
        self._completeness_checked = set()
        for _ in range(self.schedule.fault_steps):
            self.step(faults=True)
        self.heal()
        heal_started = self.now
        bound = self.liveness_bound()
        while not self.settled():
            if self.now - heal_started > bound:
                raise InvariantViolation(
                    f"no progress {bound} steps after healing: "
                    f"leader={getattr(self.any_leader(), 'id', None)} "
                    f"pending={len(self.client.pending)}"
                )
            self.stop_removed_nodes()
            self.step(faults=False)
        self.check_acked_everywhere()

    def stop_removed_nodes(self) -> None:
        """Without PreVote or CheckQuorum a removed node that never learnt of its removal keeps
        starting elections (Raft dissertation 4.2.3); operators stop removed nodes, so do we."""
        leader = self.any_leader()
        if leader is None or self.settings.pre_vote or self.settings.check_quorum:
            return
        membership = leader.core.membership
        for node in self.live_nodes():
            if (
                node is not leader
                and role_of(membership, node.id) is MemberRole.NONE
                and not self.coming_back(node.id)
            ):
                self.log(f"stop removed {node.id}")
                node.crash()

    def coming_back(self, node_id: str) -> bool:
        """Whether a node removed now is to be added back (kept running): never, here."""
        return False

    def liveness_bound(self) -> int:
        """Steps allowed after healing: elect, then ship the longest log plus every pending
        command (proposed again after each leader change) at the slowest pace the settings allow:
        one batch per in-flight slot per round trip, halved for rejections of reordered sends."""
        longest = max(node.core.last_index for node in self.live_nodes())
        backlog = longest + 2 * len(self.client.pending)
        per_round_trip = self.settings.max_append_entries * self.settings.max_inflight
        round_trip = 2 * self.network.max_delay
        return self.schedule.heal_steps + 2 * round_trip * backlog // per_round_trip

    def check_acked_everywhere(self) -> None:
        leader = self.any_leader()
        for node_id in members(leader.core.membership):
            if role_of(leader.core.membership, node_id) is MemberRole.WITNESS:
                continue
            node = self.nodes[node_id]
            if node.sm.applied_index < self.client.max_acked_index:
                raise InvariantViolation(f"{node_id} misses acknowledged writes")


def run_seed(seed: int, schedule: Schedule | None = None, world_class: type[World] = World):
    """Run one seed to the end; raises InvariantViolation (with the seed) on any failure."""
    world = world_class(seed, schedule)
    try:
        world.run()
    except Exception as error:
        tail = "\n".join(world.trace[-15:])
        raise InvariantViolation(
            f"seed {seed} failed (replay with SEED={seed}): {error}\n{tail}"
        ) from error
    return world
