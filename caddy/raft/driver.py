"""The one routine that carries out the core's Ready batches, and the node's own snapshots.

The node's `RaftActor`, the unit tests' hand-driven cluster and the simulator all drive the core
through `RaftDriver`, so the order that `Ready` prescribes is written once and what the
simulator checks is what a node runs. What differs between them (sockets or a simulated network,
a state machine, a snapshot writer thread or simulated steps) is behind `ReadyHandler` and
`SnapshotWriter`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from caddy.raft.membership import MemberRole
from caddy.raft.messages import Message
from caddy.raft.node import RaftNode
from caddy.raft.read_index import ReadState
from caddy.raft.ready import SEND_BEFORE_PERSIST, Ready, Snapshot, SoftState
from caddy.raft.storage_api import LogStorage
from caddy.raft.types import Entry, SnapshotMeta


class ReadyHandler:
    """What a driver does with a Ready besides storage. `send` is required; the other steps do
    nothing unless overridden."""

    def taken(self, ready: Ready) -> None:
        """A Ready was taken, before any of it is carried out (for checks and records)."""

    def before_sync(self, ready: Ready) -> None:
        """Everything of `ready` is written but not yet synced (the simulator crashes here)."""

    def send(self, to: str, message: Message) -> None:
        raise NotImplementedError

    def restore(self, snapshot: Snapshot) -> None:
        """Install a leader's snapshot, durable by now, in the state machine (not on a witness)."""

    def apply(self, entries: list[Entry]) -> None:
        """Apply committed entries in order (NOOP and CONFIG entries need no state machine work)."""

    def soft_state(self, soft: SoftState) -> None:
        """The node's role, leader or term changed."""

    def read_states(self, states: list[ReadState]) -> None:
        """Confirmed read indexes: serve each once the state machine applied its index."""

    def advanced(self, ready: Ready) -> None:
        """The core took `ready` as carried out (its applied index is the state machine's)."""

    def snapshot_view(self) -> Callable[[], bytes]:
        """A cheap view of the state machine now; calling it later returns the snapshot bytes."""
        raise NotImplementedError

    def snapshot_taken(self, meta: SnapshotMeta) -> None:
        """The node's own snapshot `meta` is durable and the logs are cut to it."""


class SnapshotWriter(Protocol):
    """Makes a node's own snapshot durable away from the driver's thread (a thread, or later
    steps of the simulator), then reports it with `RaftDriver.snapshot_written`."""

    def start(self, meta: SnapshotMeta, view: Callable[[], bytes]) -> None:
        """Begin `write_snapshot_file(storage, meta, view)`; report when done."""
        ...

    def finish(self) -> None:
        """Return once the write in progress (if any) is durable; its report may come later."""
        ...


def write_snapshot_file(
    storage: LogStorage, meta: SnapshotMeta, view: Callable[[], bytes]
) -> bytes:
    """A writer's work: the snapshot's bytes, once durable in the snapshot file."""
    data = view()
    storage.write_snapshot(meta, data)
    return data


class RaftDriver:
    """Carries out Ready batches in the order `Ready` documents, and the node's own snapshots:
    a view of the state machine at the applied index goes to the writer, and only once the file
    is durable are the in-memory and stored logs cut to it.

    `send_before_persist`: the leader's replication messages leave before its own fsync (as
    etcd does), so that the followers' disks and the leader's work at once. `writer` None: the
    caller handles snapshot requests itself (the unit tests' cluster takes none)."""

    def __init__(
        self,
        core: RaftNode,
        storage: LogStorage,
        handler: ReadyHandler,
        *,
        writer: SnapshotWriter | None,
        send_before_persist: bool = True,
    ) -> None:
        self.core = core
        self.storage = storage
        self._handler = handler
        self._writer = writer
        self._send_before_persist = send_before_persist
        self.snapshot_writing: SnapshotMeta | None = None  # the own snapshot being written
        self._snapshot_wanted = False  # asked for while one was being written

    def process(self) -> None:
        """Carry out every Ready the core has."""
        core = self.core
        while core.has_ready():
            self.handle_ready()

    def handle_ready(self) -> Ready:
        """Carry out one Ready (the caller checked `core.has_ready()`)."""
        core, handler = self.core, self._handler
        ready = core.ready()
        handler.taken(ready)
        messages = ready.messages
        if self._send_before_persist and messages:
            # Safe: the core counts its own entries towards commit only after `advance`.
            late = []
            for to, message in messages:
                if isinstance(message, SEND_BEFORE_PERSIST):
                    handler.send(to, message)
                else:
                    late.append((to, message))
            messages = late
        self._persist(ready)
        for to, message in messages:  # votes and acknowledgements promise what is now durable
            handler.send(to, message)
        if ready.committed_entries:
            handler.apply(ready.committed_entries)
        if ready.soft_state is not None:
            handler.soft_state(ready.soft_state)
        if ready.read_states:
            handler.read_states(ready.read_states)
        core.advance(ready)
        handler.advanced(ready)
        if ready.snapshot_request is not None and self._writer is not None:
            self.take_snapshot()  # after advance: the core's applied index is the machine's
        return ready

    def _persist(self, ready: Ready) -> None:
        storage = self.storage
        snapshot = ready.snapshot
        if snapshot is not None:
            if self.snapshot_writing is not None and self._writer is not None:
                self._writer.finish()  # the leader's snapshot replaces the one being written
            storage.save_snapshot(snapshot.meta, snapshot.data)
        if ready.entries:
            storage.append(ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)
        self._handler.before_sync(ready)
        if ready.must_sync:
            storage.sync()
        if snapshot is not None and self.core.member_role is not MemberRole.WITNESS:
            self._handler.restore(snapshot)

    def take_snapshot(self) -> None:
        """Hand a view of the state at the applied index to the writer (one write at a time)."""
        if self.snapshot_writing is not None:
            self._snapshot_wanted = True  # the core asks once: taken when this one is written
            return
        core = self.core
        applied = core.applied_index
        if applied <= core.log.snapshot.index or self._writer is None:
            return
        meta = core.snapshot_meta(applied)
        if core.member_role is MemberRole.WITNESS:
            view: Callable[[], bytes] = bytes  # a witness keeps no state: it only trims its log
        else:
            view = self._handler.snapshot_view()
        self.snapshot_writing = meta
        self._writer.start(meta, view)

    def snapshot_written(self, meta: SnapshotMeta, data: bytes) -> None:
        """The writer made snapshot `meta` durable: cut the logs to it, unless a leader's
        snapshot overtook it meanwhile."""
        self.snapshot_writing = None
        core = self.core
        if meta.index > core.log.snapshot.index:
            core.compact(meta.index, data)
            self.storage.cut_log_to_snapshot(meta)
            self._handler.snapshot_taken(meta)
        if self._snapshot_wanted:
            self._snapshot_wanted = False
            self.take_snapshot()
