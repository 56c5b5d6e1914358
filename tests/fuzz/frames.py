"""Seeded, structure-aware hostile frames for a live cluster: valid frames of every message kind,
and mutations of them — byte flips, truncation, a field replaced by a random msgpack tree (deep,
huge, of the wrong type), compressed bombs, oversized frames, unknown senders, forged node ids,
foreign clusters — and raw garbage.

What is never sent: a *well-formed* Raft or gossip message in the name of a node of the
topology. Without `security:` a node believes such a message (it is what a peer sends), so it is
an authentication question (CurveZMQ, the operations-and-security issue), not a decoding one;
frames that name a node are always malformed. Well-formed client writes touch `fuzz-` keys only.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from typing import Any

import msgpack

from caddy.raft.codec import to_wire as raft_to_wire
from caddy.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    RequestVote,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)
from caddy.raft.types import Entry, EntryKind, Membership, SnapshotMeta
from caddy.swim import Ack, Alive, Gossip, MemberRecord, MemberState, Nack, Ping, PingReq, Sync
from caddy.swim import to_wire as swim_to_wire
from caddy.wire import FLAG_COMPRESSED, PROTOCOL_VERSION

UNKNOWN_SENDERS = ("n9", "mallory", "client-1", "x" * 128)
BIG = 2**63 - 1


def _raft_bodies(rng: random.Random, sender: str) -> list[tuple[str, dict[str, Any]]]:
    term, index = rng.randint(0, 50), rng.randint(0, 1000)
    membership = Membership(frozenset({"n1", "n2", "n3"}), frozenset(), frozenset())
    entry = Entry(index + 1, term, EntryKind.COMMAND, rng.randbytes(rng.randint(0, 64)))
    messages = [
        AppendEntries(term, sender, index, term, (entry,), index),
        AppendResponse(term, sender, rng.random() < 0.5, index, index, term),
        RequestVote(term, sender, index, term, rng.random() < 0.5, rng.random() < 0.5),
        VoteResponse(term, sender, rng.random() < 0.5, rng.random() < 0.5),
        Heartbeat(term, sender, index, rng.randint(0, 100)),
        HeartbeatResponse(term, sender, rng.randint(0, 100)),
        InstallSnapshot(term, sender, SnapshotMeta(index, term, membership), 0, b"s", True),
        SnapshotResponse(term, sender, index, rng.randint(0, 100)),
        TimeoutNow(term, sender),
    ]
    return [(message.kind, raft_to_wire(message)) for message in messages]


def _swim_bodies(rng: random.Random, sender: str) -> list[tuple[str, dict[str, Any]]]:
    seq = rng.randint(0, 1 << 30)
    update = Alive(sender, rng.randint(0, 1 << 20), {"zone": "a"})
    record = MemberRecord(sender, 1, MemberState.ALIVE, {})
    messages = [
        Ping(seq, (update,)),
        Ack(seq, ()),
        PingReq(seq, "n1", True, ()),
        Nack(seq, ()),
        Gossip((update,)),
        Sync((record,), True),
    ]
    return [swim_to_wire(message) for message in messages]


def _client_bodies(rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    key = f"fuzz-{rng.randint(0, 99)}"
    session = {"client": f"fuzz{rng.randint(0, 9)}", "seq": rng.randint(1, 1 << 20), "ack": 0}
    return [
        ("kv.put", {"key": key, "value": rng.randbytes(8), **session}),
        ("kv.get", {"key": key}),
        ("kv.delete", {"key": key, **session}),
        ("kv.cas", {"key": key, "expected": None, "new": 1, **session}),
        ("kv.batch", {"requests": [[1, "kv.get", {"key": key}]]}),
        ("client.status", {}),
        ("client.members", {}),
        ("transport.heartbeat", {}),
    ]


def random_tree(rng: random.Random, budget: int = 12) -> Any:
    """A random msgpack value of any type, some of it nested or wide."""
    pick = rng.randrange(12)
    if pick == 0 or budget <= 0:
        return rng.choice([None, True, False, 0, -1, BIG, 2**64 - 1, -(2**63), 1.5])
    if pick == 1:
        return float(rng.choice(["nan", "inf", "-inf"]))
    if pick == 2:
        return rng.randbytes(rng.randint(0, 32))
    if pick == 3:
        return "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 16)))
    if pick == 4:
        return [random_tree(rng, budget - 4) for _ in range(rng.randint(0, 4))]
    if pick == 5:
        return {f"k{i}": random_tree(rng, budget - 4) for i in range(rng.randint(0, 4))}
    if pick == 6:
        return [0] * rng.choice([1000, 100_000])  # wide
    if pick == 7:
        return {str(i): i for i in range(rng.choice([1000, 20_000]))}
    return rng.randint(-(2**63), 2**64 - 1)


def deep_packed(depth: int) -> bytes:
    """msgpack bytes of a list nested `depth` deep (beyond what msgpack's packer writes)."""
    return b"\x91" * depth + b"\xc0"


def _pack(fields: list[Any]) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


class FrameFuzzer:
    """`frame()` returns (label, bytes): one hostile frame, chosen by the seeded generator."""

    def __init__(self, rng: random.Random, cluster: str, node_ids: list[str], limit: int):
        self.rng = rng
        self.cluster = cluster
        self.node_ids = node_ids
        self.limit = limit
        # zlib of 2, 16 and 64 message limits of zeros: made once, they take a while
        self._bombs = [zlib.compress(bytes(limit * factor), 9) for factor in (2, 16, 64)]
        self._makers: list[tuple[str, Callable[[], bytes]]] = [
            ("valid-unknown-sender", self._valid_unknown_sender),
            ("valid-client", self._valid_client),
            ("byte-flips", self._byte_flips),
            ("truncated", self._truncated),
            ("field-replaced", self._field_replaced),
            ("forged-node-malformed", self._forged_node_malformed),
            ("deep-nesting", self._deep_nesting),
            ("compressed-bomb", self._compressed_bomb),
            ("bad-compressed", self._bad_compressed),
            ("oversized", self._oversized),
            ("foreign-cluster", self._foreign_cluster),
            ("envelope-types", self._envelope_types),
            ("random-msgpack", self._random_msgpack),
            ("raw-bytes", self._raw_bytes),
        ]

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self._makers]

    def frame(self) -> tuple[str, bytes]:
        label, make = self.rng.choice(self._makers)
        return label, make()

    # ----- building blocks --------------------------------------------------------------------

    def _envelope(self, kind: str, body: Any, *, sender: str, flags: int = 0) -> bytes:
        return _pack(
            [PROTOCOL_VERSION, self.cluster, sender, kind, self.rng.randint(0, 99), flags, body]
        )

    def _any_body(self, sender: str) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        group = rng.randrange(3)
        if group == 0:
            return rng.choice(_raft_bodies(rng, sender))
        if group == 1:
            return rng.choice(_swim_bodies(rng, sender))
        return rng.choice(_client_bodies(rng))

    def _unknown(self) -> str:
        return self.rng.choice(UNKNOWN_SENDERS)

    def _valid_frame(self) -> bytes:
        sender = self._unknown()
        kind, body = self._any_body(sender)
        return self._envelope(kind, body, sender=sender)

    # ----- the kinds of frame ----------------------------------------------------------------

    def _valid_unknown_sender(self) -> bytes:
        return self._valid_frame()

    def _valid_client(self) -> bytes:
        kind, body = self.rng.choice(_client_bodies(self.rng))
        return self._envelope(kind, body, sender=f"client-{self.rng.randint(1, 9999)}")

    def _byte_flips(self) -> bytes:
        frame = bytearray(self._valid_frame())
        for _ in range(self.rng.randint(1, 8)):
            frame[self.rng.randrange(len(frame))] = self.rng.randrange(256)
        return bytes(frame)

    def _truncated(self) -> bytes:
        frame = self._valid_frame()
        return frame[: self.rng.randrange(len(frame))]

    def _field_replaced(self) -> bytes:
        """A valid body with one field (or one item of a list field) replaced."""
        sender = self._unknown()
        kind, body = self._any_body(sender)
        body = dict(body)
        if body:
            name = self.rng.choice(sorted(body))
            body[name] = random_tree(self.rng)
        else:
            body[self.rng.choice(["term", "g", "key", "x"])] = random_tree(self.rng)
        return self._envelope(kind, body, sender=sender)

    def _forged_node_malformed(self) -> bytes:
        """A body in a node's name with one field of the wrong type: never well-formed (a list
        nested three deep, or a map of a map, fits no field of any peer message; the unit test
        `tests/unit/test_fuzz_frames.py` checks)."""
        sender = self.rng.choice(self.node_ids)
        kind, body = self._any_body(sender)
        body = dict(body)
        name = self.rng.choice(sorted(body)) if body else "term"
        body[name] = self.rng.choice([[[[1]]], {"x": {"y": None}}])
        return self._envelope(kind, body, sender=sender)

    def _deep_nesting(self) -> bytes:
        depth = self.rng.choice([40, 600, 1000, 5000])
        fields = [
            msgpack.packb(f)
            for f in [PROTOCOL_VERSION, self.cluster, self._unknown(), "raft.vote", 0, 0, {}]
        ]
        position = self.rng.randrange(7)
        fields[position] = deep_packed(depth)
        return b"\x97" + b"".join(fields)

    def _compressed_bomb(self) -> bytes:
        """A small frame whose body inflates far past the message limit."""
        bomb = self.rng.choice(self._bombs)
        return self._envelope("raft.append", bomb, sender=self._unknown(), flags=FLAG_COMPRESSED)

    def _bad_compressed(self) -> bytes:
        payload = self.rng.choice([self.rng.randbytes(40), zlib.compress(b"\xc1" * 100), b""])
        return self._envelope("raft.vote", payload, sender=self._unknown(), flags=FLAG_COMPRESSED)

    def _oversized(self) -> bytes:
        size = self.rng.choice([self.limit + 1, self.limit + 4096, 3 * self.limit])
        return self._envelope(
            "kv.put", {"key": "fuzz-big", "value": bytes(size)}, sender="client-1"
        )

    def _foreign_cluster(self) -> bytes:
        sender = self._unknown()
        kind, body = self._any_body(sender)
        return _pack([PROTOCOL_VERSION, "elsewhere", sender, kind, 0, 0, body])

    def _envelope_types(self) -> bytes:
        fields: list[Any] = [PROTOCOL_VERSION, self.cluster, self._unknown(), "raft.vote", 0, 0, {}]
        fields[self.rng.randrange(7)] = random_tree(self.rng)
        if self.rng.random() < 0.3:
            fields = fields[: self.rng.randrange(7)] + fields  # the wrong length
        return _pack(fields)

    def _random_msgpack(self) -> bytes:
        return _pack(random_tree(self.rng))

    def _raw_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.choice([0, 1, 7, 64, 4096]))
