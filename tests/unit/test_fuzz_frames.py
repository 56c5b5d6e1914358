"""The fuzz suite's frame generator (tests/fuzz/frames.py) is seeded, makes every kind of frame it
names, and never makes a well-formed Raft or gossip message in a node's name (see its docstring):
every such frame decodes to a WireError somewhere between envelope and body."""

import random

from caddy.errors import WireError
from caddy.raft.codec import from_wire as raft_from_wire
from caddy.swim import from_wire as swim_from_wire
from caddy.wire import decode_envelope
from tests.fuzz.frames import FrameFuzzer

LIMIT = 1 << 20
NODES = ["n1", "n2", "n3"]


def frames(seed, count):
    fuzzer = FrameFuzzer(random.Random(seed), "test", NODES, LIMIT)
    return [fuzzer.frame() for _ in range(count)]


def test_the_same_seed_makes_the_same_frames_and_every_kind_appears():
    first = frames(3, 600)
    assert first == frames(3, 600)
    assert first != frames(4, 600)
    assert {label for label, _ in first} == set(
        FrameFuzzer(random.Random(0), "t", NODES, LIMIT).labels
    )


def test_no_frame_is_a_well_formed_peer_message_in_a_nodes_name():
    for label, frame in frames(5, 3000):
        try:
            envelope = decode_envelope(frame, LIMIT)
        except WireError:
            continue
        if envelope.sender not in NODES or envelope.cluster != "test":
            continue
        prefix = envelope.kind.partition(".")[0]
        decode = {"raft": raft_from_wire, "swim": swim_from_wire}.get(prefix)
        if decode is None:
            continue
        try:
            message = decode(envelope.kind, envelope.body)
        except WireError:
            continue
        raise AssertionError(f"{label}: a well-formed {message!r} in {envelope.sender}'s name")
