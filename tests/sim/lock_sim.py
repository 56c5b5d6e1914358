"""The Raft simulation with the node's real state machine stack (sessions, locks, key-value) and
lock clients, under the same faults: crashes inside Readies, partitions, leader changes,
membership changes, snapshots sent and restored.

Checked at every application, beside Raft's own invariants:
- every node reaches the same lock outcome (results, grants to waiters, token counter) at each
  index, also after restoring a snapshot;
- tokens never repeat and only grow, in log order, whoever leads and whatever was restarted;
- the cluster's fenced writes, in log order, pass a `FencingGuard` (no write is applied with a
  token below one already applied for that lock);
- no two owners ever believe they hold a lock at once: a client counts a lease from when it
  learnt of the grant (the leader applied it) until the stamp of its request plus the ttl.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import msgpack

from caddy.errors import CaddyError
from caddy.fencing import FencingGuard, StaleToken
from caddy.raft.errors import RequestRejected
from caddy.raft.types import Entry, EntryKind
from caddy.replication import KeyValueStore, encode_batch, encode_kv
from caddy.replication.commands import decode_batch
from caddy.replication.locks import (
    ACQUIRE,
    FENCE,
    RELEASE,
    RENEW,
    SweepTimer,
    decode_lock,
    encode_lock,
    is_lock_command,
    sweep_entry,
    with_locks,
)
from tests.sim.raft_sim import Client, InvariantViolation, StateMachine, World, run_seed

TICK_MS = 10  # one simulation step is this much of the leader's clock
OWNERS = ("o1", "o2", "o3")
NAMES = ("a", "b")


class LockedMachine(StateMachine):
    """The hash chain of every entry, and the node's replicated stack applied to each command
    entry; `results` and `changes` are the last entry's."""

    __slots__ = ("sessions", "locking", "results", "changes")

    def __init__(
        self, applied_index: int = 0, chain: bytes = b"", replicated: bytes | None = None
    ) -> None:
        super().__init__(applied_index, chain)
        self.sessions, self.locking = with_locks(KeyValueStore())
        if replicated is not None:
            self.sessions.restore(replicated)
        self.results: list = []
        self.changes: list = []

    def apply(self, entry: Entry) -> None:
        super().apply(entry)
        command = entry.kind is EntryKind.COMMAND
        self.results = self.sessions.apply_batch(entry.data) if command else []
        self.changes = self.locking.locks.take_changes()

    def snapshot(self) -> bytes:
        return self.snapshot_view()()

    def snapshot_view(self) -> Callable[[], bytes]:
        index, chain, replicated = self.applied_index, self.chain, self.sessions.snapshot_view()
        return lambda: msgpack.packb([index, chain, replicated()])

    @classmethod
    def restore(cls, data: bytes | None) -> LockedMachine:
        if not data:
            return cls()
        index, chain, replicated = msgpack.unpackb(data)
        return cls(index, chain, replicated)


class LockClient(Client):
    """Lock owners acting at random: acquire (with or without waiting), renew, release, and
    writes fenced by the token they know of (or an older one); the leader's sweeps."""

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.rng = random.Random(f"{world.seed}-locks")  # the world's stream stays as it was
        # command -> (op, name, owner, stamp); each owner is a client with one session, one
        # request at a time
        self.sent: dict[bytes, tuple[str, str, str, int]] = {}
        self.seqs: dict[str, int] = {}
        self.tokens: dict[tuple[str, str], int] = {}  # the latest grant each owner learnt of
        self.beliefs: dict[str, list[tuple[int, int, str]]] = {name: [] for name in NAMES}
        self.sweeps = SweepTimer()
        self.released_at: dict[tuple[str, str], int] = {}  # when each owner last sent a release
        self.grants_learnt = 0

    def propose_new(self) -> None:
        rng = self.rng
        name, owner = rng.choice(NAMES), rng.choice(OWNERS)
        if any(sent[2] == owner for sent in self.sent.values()):
            return  # a client waits for its answer before it sends the next request
        ttl = rng.choice((30, 100, 300))
        op = rng.choice((ACQUIRE, ACQUIRE, RENEW, RELEASE, FENCE, FENCE))
        known = self.tokens.get((name, owner), 1)
        if op == ACQUIRE:
            payload = encode_lock(ACQUIRE, name, owner, ttl, rng.choice((0, 0, 200)))
        elif op == RENEW:
            payload = encode_lock(RENEW, name, owner, known)
        elif op == RELEASE:
            payload = encode_lock(RELEASE, name, owner)
            self.stop_believing(name, owner, self.world.now * TICK_MS)
        else:
            token = known if rng.random() < 0.7 else max(1, known - rng.randint(1, 3))
            payload = encode_lock(FENCE, name, "", token, encode_kv("put", name, [owner, token]))
        self.counter += 1
        stamp = self.world.now * TICK_MS
        seq = self.seqs[owner] = self.seqs.get(owner, 0) + 1
        command = encode_batch(stamp, [(owner, seq, seq, payload)])  # every earlier one answered
        self.sent[command] = (op, name, owner, stamp)
        self.pending[command] = ("", 0, 0, 0)
        leader = self.world.any_leader()
        if leader is not None:
            self.propose(leader, command)

    def retry_lost(self) -> None:
        super().retry_lost()
        leader = self.world.any_leader()
        if leader is None:
            return
        now_ms = self.world.now * TICK_MS
        if self.sweeps.due(leader.sm.locking.locks.next_deadline_ms(), now_ms):
            try:
                leader.core.propose(sweep_entry(now_ms))
            except (CaddyError, RequestRejected):
                pass

    def entry_applied(self, node, entry: Entry) -> None:
        was_pending = entry.data in self.pending
        super().entry_applied(node, entry)
        if not was_pending or entry.data not in self.acked or entry.data not in self.sent:
            return
        op, name, owner, stamp = self.sent.pop(entry.data)
        [result] = node.sm.results
        value = result.get("value") if result.get("ok") is True else None
        if op in (ACQUIRE, RENEW) and isinstance(value, dict) and value["token"] is not None:
            self.tokens[(name, owner)] = value["token"]
            self.grants_learnt += 1
            lease_ms = value["expires_ms"] - node.sm.sessions.log_time_ms  # the lock's ttl
            until = stamp + lease_ms
            released = self.released_at.get((name, owner), -1)
            if released >= stamp:  # a release sent after this request: it ends the belief
                until = min(until, released)
            self.believe(name, owner, self.world.now * TICK_MS, until)

    def believe(self, name: str, owner: str, start: int, until: int) -> None:
        """`owner` believes it holds `name` from `start` (when it learnt) to `until`."""
        if until <= start:
            return
        for other_start, other_until, other in self.beliefs[name]:
            if other != owner and other_start < until and start < other_until:
                raise InvariantViolation(
                    f"{owner} believes it holds {name!r} over [{start}, {until}) while {other} "
                    f"does over [{other_start}, {other_until})"
                )
        self.beliefs[name].append((start, until, owner))

    def stop_believing(self, name: str, owner: str, now: int) -> None:
        """A client stops counting on a lock when it sends the release (`Lock.held()`)."""
        self.released_at[(name, owner)] = now
        self.beliefs[name] = [
            (start, min(until, now) if other == owner else until, other)
            for start, until, other in self.beliefs[name]
        ]


class LockWorld(World):
    """A seed's world with the lock workload and the lock invariants (see the module)."""

    machine_class = LockedMachine
    client_class = LockClient

    def __init__(self, seed: int, schedule=None) -> None:
        super().__init__(seed, schedule)
        self.lock_outcome_at: dict[int, tuple[str, str, int]] = {}
        self.granted: dict[int, int] = {}  # token -> the index that granted it
        self.guard = FencingGuard()
        self.fenced_applied = 0
        self.fenced_refused = 0

    def liveness_bound(self) -> int:
        """Raft's bound, plus shipping one snapshot of this state: the sessions' cached results
        make it kilobytes (each command leaves at most ~64 bytes, and the commands still to
        commit after healing add theirs), sent in chunks of as little as 8 bytes, one chunk a
        round trip."""
        snapshot_bytes = 64 * (self.client.counter + 1)
        chunks = snapshot_bytes // self.settings.snapshot_chunk_bytes + 1
        return super().liveness_bound() + 2 * 2 * self.network.max_delay * chunks

    def check_applied(self, node, entry: Entry) -> None:
        sm = node.sm
        outcome = (repr(sm.results), repr(sm.changes), sm.locking.locks.revision)
        known = self.lock_outcome_at.setdefault(entry.index, outcome)
        if known != outcome:
            raise InvariantViolation(f"{node.id} reached another lock outcome at {entry.index}")
        if known is outcome:  # the first node to apply this index: judge it once, in log order
            self.judge(entry, sm)
        super().check_applied(node, entry)

    def judge(self, entry: Entry, sm: LockedMachine) -> None:
        tokens = [c.token for c in sm.changes if c.token is not None]
        payloads = _payloads(entry)
        for payload, result in zip(payloads, sm.results, strict=True):
            value = result.get("value") if result.get("ok") is True else None
            op = decode_lock(payload)[0] if is_lock_command(payload) else None
            if op == ACQUIRE and isinstance(value, dict) and value["token"] is not None:
                if (
                    value["token"] not in self.granted
                    or self.granted[value["token"]] == entry.index
                ):
                    tokens.append(value["token"])  # (an acquire by the holder keeps its token)
            if op == FENCE:
                _, name, _, token, _ = decode_lock(payload)
                if result.get("ok") is True:
                    self.fenced_applied += 1
                    try:
                        self.guard.check(name, token)
                    except StaleToken as error:
                        raise InvariantViolation(f"index {entry.index}: {error}") from error
                else:
                    self.fenced_refused += 1
        for token in tokens:
            if token in self.granted and self.granted[token] != entry.index:
                raise InvariantViolation(
                    f"token {token} granted at {entry.index} and {self.granted[token]}"
                )
            if self.granted and token < max(self.granted) and token not in self.granted:
                raise InvariantViolation(f"token {token} granted after {max(self.granted)}")
            self.granted[token] = entry.index


def _payloads(entry: Entry) -> list[bytes]:
    if entry.kind is not EntryKind.COMMAND:
        return []
    try:
        _, commands = decode_batch(entry.data)
    except CaddyError:
        return []
    return [b"" if isinstance(command, CaddyError) else command.payload for command in commands]


def run_lock_seed(seed: int) -> LockWorld:
    """Run one seed to the end; raises InvariantViolation (with the seed) on any failure."""
    return run_seed(seed, world_class=LockWorld)
