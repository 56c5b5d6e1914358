"""A hand-driven cluster of RaftNodes for unit tests: explicit ticks, delivery and cut links.

Each node is driven by the nodes' own `RaftDriver`: persist, sync, send, apply, advance.
"""

from __future__ import annotations

import random

from caddy.raft.driver import RaftDriver, ReadyHandler
from caddy.raft.memory_storage import MemoryLogStorage
from caddy.raft.messages import AppendEntries, Message
from caddy.raft.node import RaftNode
from caddy.raft.ready import Ready, Snapshot, StateRole
from caddy.raft.types import Entry, EntryKind, Membership

DEFAULTS = {"heartbeat_ticks": 1, "election_ticks_min": 10, "election_ticks_max": 20}


class Cluster:
    def __init__(
        self,
        voters=("a", "b", "c"),
        learners=(),
        witnesses=(),
        *,
        spares=(),
        seed: int = 1,
        **settings,
    ) -> None:
        self.membership = Membership(frozenset(voters), frozenset(learners), frozenset(witnesses))
        self.settings = {**DEFAULTS, **settings}
        self.seed = seed
        self.storage: dict[str, MemoryLogStorage] = {}
        self.nodes: dict[str, RaftNode] = {}
        self.applied: dict[str, list[Entry]] = {}
        self.readies: dict[str, list[Ready]] = {}
        self.snapshots: dict[str, bytes] = {}
        self.outbox: list[tuple[str, str, Message]] = []
        self.cut: set[tuple[str, str]] = set()
        self.drop = None  # optional predicate (sender, to, message) -> bool
        self.down: set[str] = set()
        for node_id in (*voters, *learners, *witnesses):
            self.storage[node_id] = MemoryLogStorage()
            self.start(node_id, self.membership)
        for node_id in spares:
            self.storage[node_id] = MemoryLogStorage()
            self.start(node_id, Membership())

    def start(self, node_id: str, membership: Membership | None = None, **overrides) -> RaftNode:
        self.down.discard(node_id)
        recovered = self.storage[node_id].load()
        node = RaftNode(
            node_id,
            membership if membership is not None else self.membership,
            storage_state=recovered,
            rng=random.Random(f"{self.seed}-{node_id}"),
            **{**self.settings, **overrides},
        )
        self.nodes[node_id] = node
        self.applied[node_id] = []
        self.readies[node_id] = []
        self.process(node_id)
        return node

    def crash(self, node_id: str) -> None:
        self.storage[node_id].crash()
        self.down.add(node_id)

    def process(self, node_id: str) -> None:
        """Drive one node's Ready batches until it has none (snapshot requests are left to the
        tests, which compact by hand)."""
        RaftDriver(
            self.nodes[node_id],
            self.storage[node_id],
            _Recorder(self, node_id),
            writer=None,
            send_before_persist=False,
        ).process()

    def live(self) -> list[str]:
        return [node_id for node_id in self.nodes if node_id not in self.down]

    def deliver(self, max_rounds: int = 200) -> None:
        """Deliver messages (dropping those on cut links or to dead nodes) until none are left."""
        for node_id in self.live():
            self.process(node_id)
        for _ in range(max_rounds):
            if not self.outbox:
                return
            batch, self.outbox = self.outbox, []
            for sender, to, message in batch:
                if to in self.down or sender in self.down or (sender, to) in self.cut:
                    continue
                if self.drop is not None and self.drop(sender, to, message):
                    continue
                self.nodes[to].step(message)
                self.process(to)
        raise AssertionError("messages kept flowing")

    def elect_without_replication(self, node_id: str) -> RaftNode:
        """Win an election but deliver none of the new leader's AppendEntries."""
        self.drop = lambda sender, to, message: isinstance(message, AppendEntries)
        self.nodes[node_id].campaign()
        self.deliver()
        self.drop = None
        self.outbox = []
        return self.nodes[node_id]

    def tick(self, times: int = 1, only=None) -> None:
        for _ in range(times):
            for node_id in only or self.live():
                self.nodes[node_id].tick()
                self.process(node_id)
            self.deliver()

    def elect(self, node_id: str) -> RaftNode:
        self.nodes[node_id].campaign()
        self.process(node_id)
        self.deliver()
        assert self.nodes[node_id].state is StateRole.LEADER, self.nodes[node_id].state
        return self.nodes[node_id]

    def isolate(self, node_id: str) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut |= {(node_id, other), (other, node_id)}

    def heal(self) -> None:
        self.cut = set()

    def leaders(self) -> list[str]:
        return [n for n in self.live() if self.nodes[n].state is StateRole.LEADER]

    def commands(self, node_id: str) -> list[bytes]:
        return [e.data for e in self.applied[node_id] if e.kind is EntryKind.COMMAND]

    def propose(self, leader: str, *commands: bytes) -> None:
        """Propose, replicate, and tick the leader once: followers learn commits on a tick."""
        for command in commands:
            self.nodes[leader].propose(command)
        self.process(leader)
        self.deliver()
        if leader in self.live():
            self.tick(only=[leader])


class _Recorder(ReadyHandler):
    """Records what one node's Readies hold: the Readies, installed snapshots, sends, applies."""

    def __init__(self, cluster: Cluster, node_id: str) -> None:
        self.cluster, self.node_id = cluster, node_id

    def taken(self, ready: Ready) -> None:
        self.cluster.readies[self.node_id].append(ready)

    def send(self, to: str, message: Message) -> None:
        self.cluster.outbox.append((self.node_id, to, message))

    def restore(self, snapshot: Snapshot) -> None:
        self.cluster.snapshots[self.node_id] = snapshot.data

    def apply(self, entries: list[Entry]) -> None:
        self.cluster.applied[self.node_id].extend(entries)
