"""The attacker process of a fuzz run: every attacker of `tests.fuzz.connections`, and senders of
`tests.fuzz.frames` over DEALERs with random, forged and duplicate routing ids, against every
port of every node, until the deadline. The frames sent last are written to a file, for a
reproducer (`python -m tests.fuzz.run --replay FILE`).

`python -m tests.fuzz.attack TOPOLOGY SEED SECONDS RECORD_FILE [ATTACKER,...]`
(attackers by name: `ATTACKERS`' names and "frames"; all of them when none are named)
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import deque
from urllib.parse import urlsplit

import zmq

from caddy.config import load_topology
from tests.fuzz import connections
from tests.fuzz.frames import FrameFuzzer

RECORDED = 5000  # the last frames sent, kept for the reproducer
SENDERS = 3  # threads sending fuzz frames


def port_of(address: str) -> int:
    return urlsplit(address).port or 0


class Recorder:
    """The last RECORDED frames sent: (monotonic time, node, port kind, label, hex)."""

    def __init__(self) -> None:
        self.frames: deque[tuple[float, str, str, str, str]] = deque(maxlen=RECORDED)
        self.counts: dict[str, int] = {}

    def note(self, node: str, port: str, label: str, frame: bytes) -> None:
        self.frames.append((time.monotonic(), node, port, label, frame.hex()))
        self.counts[label] = self.counts.get(label, 0) + 1

    def dump(self, path: str) -> None:
        with open(path, "w") as out:
            for when, node, port, label, data in self.frames:
                out.write(
                    json.dumps(
                        {"t": when, "node": node, "port": port, "label": label, "frame": data}
                    )
                    + "\n"
                )


def frame_sender(targets, config, deadline, rnd: random.Random, recorder: Recorder) -> None:
    """DEALERs that send fuzz frames to one port each, for a while, then close; routing ids
    random, a node's (forged) or a node's link id shape."""
    fuzzer = FrameFuzzer(
        rnd, config.cluster, [n.id for n in config.nodes], config.transport.max_message_bytes
    )
    context = zmq.Context()
    while time.monotonic() < deadline:
        node, port_kind, port = rnd.choice(targets)
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 1000)
        identity = rnd.choice(
            [None, b"n1", b"n2", b"n3", b"n2\0" + rnd.randbytes(8), rnd.randbytes(5)]
        )
        if identity is not None:
            sock.setsockopt(zmq.ROUTING_ID, identity)
        sock.connect(f"tcp://127.0.0.1:{port}")
        until = min(deadline, time.monotonic() + rnd.random())
        while time.monotonic() < until:
            label, frame = fuzzer.frame()
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.ZMQError:
                time.sleep(0.001)
                continue
            recorder.note(node, port_kind, label, frame)
        sock.close()
    context.term()


ATTACKERS = {
    attacker.__name__: attacker
    for attacker in (
        connections.raw_flooder,
        connections.socket_type_attacker,
        connections.raw_garbage,
        connections.connection_churn,
        connections.half_open,
        connections.slow_handshake,
    )
}
FRAMES = "frames"  # the fuzz frame senders


def main(argv: list[str]) -> int:
    topology, seed, seconds, record_file = argv[0], int(argv[1]), float(argv[2]), argv[3]
    chosen = argv[4].split(",") if len(argv) > 4 else [*ATTACKERS, FRAMES]
    config = load_topology(topology)
    targets = [
        (node.id, kind, port_of(address))
        for node in config.nodes
        for kind, address in (("peer", node.address), ("client", node.client_address))
    ]
    ports = tuple(port for _, _, port in targets)
    deadline = time.monotonic() + seconds
    recorder = Recorder()
    threads = [
        threading.Thread(
            target=attacker, args=(ports, deadline, random.Random(f"{seed}-{n}")), daemon=True
        )
        for n, (name, attacker) in enumerate(ATTACKERS.items())
        if name in chosen
    ] + [
        threading.Thread(
            target=frame_sender,
            args=(targets, config, deadline, random.Random(f"{seed}-frames-{n}"), recorder),
            daemon=True,
        )
        for n in range(SENDERS if FRAMES in chosen else 0)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 5)
    recorder.dump(record_file)
    print(json.dumps({"sent": recorder.counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
