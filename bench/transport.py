"""Node-to-node round trips through the transport versus raw pyzmq DEALER/ROUTER, two processes.

Prints one JSON line. Both sides answer on their I/O thread, so the figures are the transport's
own cost (envelope checks, poller, dispatch, stats); `actor_` figures add a pykka actor hop on the
sending side, as a real subsystem pays. For a fair baseline the raw nodes are wired like transport
nodes (each binds a ROUTER and sends through a DEALER to the other's, so a reply takes the other
TCP connection), send the same bytes (the 7-field envelope, packed and unpacked with msgpack on
both sides, unchecked), and alternate rounds with the transport in one run, so that load from
elsewhere on the machine falls on both.

`decode_us` is the in-process cost per inbound frame of what a node does before a message reaches
its core: decode_envelope and the kind's validator (Raft's from_wire, gossip's from_wire, or
unpack_batch and parse_request for key-value requests), in microseconds, the best of several
repeats. `--decode-baseline DIR` measures the same on another copy of the code (a directory
holding its `caddy/` and `actors/`, e.g. `git archive HEAD caddy actors | tar -x -C DIR`), in
child processes alternating with this tree's, and reports both and their ratio.
Usage: python bench/transport.py [--count N] [--inflight N] [--rounds N]
       python bench/transport.py --decode-only [--decode-baseline DIR] [--decode-rounds N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pykka
import zmq

REPO = Path(__file__).resolve().parents[1]


def _code_root() -> Path:
    """`--code-root DIR`, read before the imports below: import that tree's code, not this one's
    (how a decode-cost child measures the baseline)."""
    if "--code-root" in sys.argv:
        return Path(sys.argv[sys.argv.index("--code-root") + 1]).resolve()
    return REPO


sys.path.insert(0, str(_code_root()))

from actors.local_cluster import free_ports  # noqa: E402
from actors.transport import Inbound, Transport  # noqa: E402
from caddy.config import ClusterConfig, parse_topology  # noqa: E402

PAYLOAD = {"term": 7, "index": 123456, "data": b"x" * 100}
PIPELINE_FACTOR = 5  # pipelined rounds carry this many times the sequential round's messages


def bench_config() -> ClusterConfig:
    ports = free_ports(4)
    nodes = [
        {
            "id": node_id,
            "address": f"tcp://127.0.0.1:{ports[2 * i]}",
            "client_address": f"tcp://127.0.0.1:{ports[2 * i + 1]}",
        }
        for i, node_id in enumerate(("a", "b"))
    ]
    return parse_topology({"cluster": "bench", "nodes": nodes, "data_dir": "/tmp/caddy-bench"})


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(prefix: str, rtts_s: list[float], msgs_per_s: float) -> dict[str, float]:
    return {
        f"{prefix}rtt_p50_us": round(statistics.median(rtts_s) * 1e6, 1),
        f"{prefix}rtt_p99_us": round(percentile(rtts_s, 0.99) * 1e6, 1),
        f"{prefix}msgs_per_s": round(msgs_per_s),
    }


# ----- the echo side (child process) -----------------------------------------------------------


def transport_echo(config: ClusterConfig, stop: multiprocessing.Event) -> None:
    transport = Transport(config, "b")
    transport.register(
        "bench", lambda inbound: transport.send("a", "bench.pong", inbound.envelope.body)
    )
    transport.start()
    stop.wait()
    transport.stop()


def raw_frame(kind: str, body: dict) -> bytes:
    """The bytes the transport would send: the envelope, packed without the codec's checks."""
    return msgpack.packb([1, "bench", "a", kind, 0, 0, body], use_bin_type=True)


def raw_node(own_address: str, peer_address: str) -> tuple[zmq.Socket, zmq.Socket]:
    """A raw node wired like a transport node: a ROUTER bound here, a DEALER to the peer."""
    context = zmq.Context.instance()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    for sock in (router, dealer):
        sock.setsockopt(zmq.LINGER, 0)
    router.bind(own_address)
    dealer.connect(peer_address)
    return router, dealer


def raw_echo(own_address: str, peer_address: str, stop: multiprocessing.Event) -> None:
    router, dealer = raw_node(own_address, peer_address)
    while not stop.is_set():
        if router.poll(100):
            _, frame = router.recv_multipart()
            dealer.send(raw_frame("bench.pong", msgpack.unpackb(frame)[6]))
    router.close()
    dealer.close()


# ----- the measuring side ----------------------------------------------------------------------


def wait_connected(transport: Transport, peer: str) -> None:
    """Until both directions work: a frame came in, and one went out (sends before that drop)."""
    deadline = time.monotonic() + 10
    while not ((stats := transport.peer_stats()[peer]).hearing and stats.msgs_out > 0):
        if time.monotonic() > deadline:
            raise SystemExit("bench: the echo node never answered")
        time.sleep(0.01)


class IoLoopPinger:
    """Keeps `inflight` pings outstanding from the I/O thread itself; records every round trip."""

    def __init__(self, transport: Transport, count: int, inflight: int) -> None:
        self.transport = transport
        self.remaining = count
        self.inflight = inflight
        self.rtts: list[float] = []
        self.done = threading.Event()

    def send_one(self) -> None:
        self.transport.send("b", "bench.ping", {**PAYLOAD, "t": time.perf_counter()})

    def on_pong(self, inbound: Inbound) -> None:
        """Runs on the I/O thread only, so `remaining` has one writer once the run started."""
        self.rtts.append(time.perf_counter() - inbound.envelope.body["t"])
        if self.remaining > 0:
            self.remaining -= 1
            self.send_one()
        elif len(self.rtts) == self.total:
            self.done.set()

    def run(self) -> tuple[list[float], float]:
        self.total = self.remaining
        first = min(self.inflight, self.remaining)
        self.remaining -= first
        started = time.perf_counter()
        for _ in range(first):
            self.send_one()
        if not self.done.wait(120):
            raise SystemExit("bench: pings were lost")
        return self.rtts, self.total / (time.perf_counter() - started)


class PingActor(pykka.ThreadingActor):
    """The sending side as a subsystem sees it: an actor that sends and is told the answer."""

    def __init__(self, transport: Transport, count: int) -> None:
        super().__init__()
        self.transport, self.remaining = transport, count
        self.rtts: list[float] = []
        self.done = threading.Event()

    def on_receive(self, message: object) -> None:
        if isinstance(message, Inbound):
            self.rtts.append(time.perf_counter() - message.envelope.body["t"])
            if self.remaining == 0:
                self.done.set()
                return
        self.remaining -= 1
        self.transport.send("b", "bench.ping", {**PAYLOAD, "t": time.perf_counter()})


class RawPinger:
    """The baseline: pings the raw echo, sequentially or with `inflight` pending."""

    def __init__(self, own_address: str, peer_address: str) -> None:
        self.router, self.dealer = raw_node(own_address, peer_address)
        self.ping({**PAYLOAD, "t": 0.0})  # warm up both connections
        self.pong()

    def ping(self, body: dict) -> None:
        self.dealer.send(raw_frame("bench.ping", body))

    def pong(self) -> dict:
        return msgpack.unpackb(self.router.recv_multipart()[1])[6]

    def sequential(self, count: int) -> list[float]:
        rtts = []
        for _ in range(count):
            self.ping({**PAYLOAD, "t": time.perf_counter()})
            sent_at = self.pong()["t"]
            rtts.append(time.perf_counter() - sent_at)
        return rtts

    def pipelined(self, total: int, inflight: int) -> float:
        started = time.perf_counter()
        sent = received = 0
        while received < total:
            while sent < total and sent - received < inflight:
                self.ping({**PAYLOAD, "t": time.perf_counter()})
                sent += 1
            self.pong()
            received += 1
        return total / (time.perf_counter() - started)

    def close(self) -> None:
        self.router.close()
        self.dealer.close()


class TransportPinger:
    """The transport side: node a pings node b from a's I/O thread, then from a pykka actor."""

    def __init__(self, config: ClusterConfig) -> None:
        self.transport = Transport(config, "a")
        self.handler: list = [None]
        self.transport.register("bench", lambda inbound: self.handler[0](inbound))
        self.transport.start()
        wait_connected(self.transport, "b")

    def sequential(self, count: int) -> list[float]:
        pinger = IoLoopPinger(self.transport, count, 1)
        self.handler[0] = pinger.on_pong
        return pinger.run()[0]

    def pipelined(self, total: int, inflight: int) -> float:
        pinger = IoLoopPinger(self.transport, total, inflight)
        self.handler[0] = pinger.on_pong
        return pinger.run()[1]

    def through_actor(self, count: int) -> list[float]:
        actor = PingActor.start(self.transport, count)
        self.handler[0] = actor.tell
        actor.tell("go")
        actor_proxy = actor.proxy()
        if not actor_proxy.done.get().wait(120):
            raise SystemExit("bench: actor pings were lost")
        rtts = actor_proxy.rtts.get()
        actor.stop()
        return rtts

    def close(self) -> None:
        self.transport.stop()


def measure(
    config: ClusterConfig, raw_addresses: list[str], count: int, inflight: int, rounds: int
) -> dict[str, float]:
    """Alternate raw and transport rounds (swapping which goes first) and pool their samples."""
    transport, raw = TransportPinger(config), RawPinger(*raw_addresses)
    try:
        per_round = max(1, count // rounds)
        rtts: dict[str, list[float]] = {"transport_": [], "raw_": []}
        rates: dict[str, list[float]] = {"transport_": [], "raw_": []}
        for round_number in range(rounds):
            sides = [("transport_", transport), ("raw_", raw)]
            for prefix, side in sides if round_number % 2 == 0 else reversed(sides):
                rtts[prefix] += side.sequential(per_round)
                rates[prefix].append(side.pipelined(per_round * PIPELINE_FACTOR, inflight))
        actor_rtts = transport.through_actor(count)
    finally:
        transport.close()
        raw.close()
    result: dict[str, float] = {}
    for prefix in ("transport_", "raw_"):
        result |= summary(prefix, rtts[prefix], statistics.median(rates[prefix]))
    result["actor_rtt_p50_us"] = round(statistics.median(actor_rtts) * 1e6, 1)
    return result


# ----- decode cost per frame (in-process) ------------------------------------------------------

DECODE_LIMIT = 16 * 1024 * 1024
DECODE_FRAMES = 2000  # frames per shape and repeat
DECODE_REPEATS = 7


def decode_frames() -> dict[str, tuple[bytes, Any]]:
    """Shape name -> (frame, decode function) for the inbound frames a node handles most, built
    with the public API that every version of the code has."""
    from caddy.raft.codec import from_wire, to_wire
    from caddy.raft.messages import AppendEntries, AppendResponse
    from caddy.raft.types import Entry, EntryKind
    from caddy.replication.requests import parse_request
    from caddy.swim import Alive, Ping, Suspect
    from caddy.swim import from_wire as swim_from_wire
    from caddy.swim import to_wire as swim_to_wire
    from caddy.wire import BATCH_KIND, Codec, decode_envelope, unpack_batch

    codec = Codec("bench", "a", max_message_bytes=DECODE_LIMIT, compress_threshold=None)

    def raft(frame: bytes) -> Any:
        envelope = decode_envelope(frame, DECODE_LIMIT)
        return from_wire(envelope.kind, envelope.body)

    def swim(frame: bytes) -> Any:
        envelope = decode_envelope(frame, DECODE_LIMIT)
        return swim_from_wire(envelope.kind, envelope.body)

    def request(frame: bytes) -> Any:
        envelope = decode_envelope(frame, DECODE_LIMIT)
        return parse_request(envelope.kind, envelope.body)

    def batch(frame: bytes) -> Any:
        items, _ = unpack_batch(decode_envelope(frame, DECODE_LIMIT))
        return [parse_request(item.kind, item.body) for item in items]

    def append(count: int) -> bytes:
        entries = tuple(Entry(100 + i, 7, EntryKind.COMMAND, b"x" * 100) for i in range(count))
        return codec.encode("raft.append", to_wire(AppendEntries(7, "a", 99, 7, entries, 99)))

    session = {"client": "c-0123456789", "seq": 1234, "ack": 1200}
    put = {"key": "key-000123", "value": "v" * 20, **session}
    nested = {**put, "value": {"name": "x", "tags": ["a", "b"], "pos": {"x": 1.5, "y": [1, 2]}}}
    ping = Ping(42, (Alive("b", 3, {"role": "voter", "zone": "a"}), Suspect("c", 2, "a")))
    return {
        "raft_append_1": (append(1), raft),
        "raft_append_64": (append(64), raft),
        "raft_append_response": (
            codec.encode("raft.append_response", to_wire(AppendResponse(7, "a", True, 99, 0, 0))),
            raft,
        ),
        "kv_put": (codec.encode("kv.put", put, 17), request),
        "kv_put_nested_value": (codec.encode("kv.put", nested, 17), request),
        "kv_batch_64_per_request": (
            codec.encode_batch(BATCH_KIND, [[n, "kv.put", put] for n in range(64)]),
            batch,
        ),
        "swim_ping": (codec.encode(*swim_to_wire(ping)), swim),
    }


def decode_cost(repeats: int = DECODE_REPEATS, frames: int = DECODE_FRAMES) -> dict[str, float]:
    """Microseconds per frame of each shape, the best of `repeats` runs of `frames` frames."""
    figures = {}
    for name, (frame, decode) in decode_frames().items():
        decode(frame)  # warm up, and fail loudly if the shape does not decode
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(frames):
                decode(frame)
            best = min(best, (time.perf_counter() - started) / frames)
        per_frame = best * 1e6
        if name == "kv_batch_64_per_request":
            per_frame /= 64
        figures[name] = round(per_frame, 3)
    return figures


def decode_child(root: Path) -> dict[str, float]:
    """`decode_cost()` of the code under `root`, in a fresh process."""
    command = [sys.executable, __file__, "--code-root", str(root), "--decode-child"]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    return json.loads(result.stdout)


def decode_ab(baseline: Path, rounds: int) -> dict[str, Any]:
    """This tree's decode cost against `baseline`'s, child processes alternating (ABBA...), so
    that the machine's noise falls on both; the median over rounds of each side's best."""
    samples: dict[str, list[dict[str, float]]] = {"after": [], "before": []}
    for round_number in range(rounds):
        sides = [("after", REPO), ("before", baseline)]
        for side, root in sides if round_number % 2 == 0 else reversed(sides):
            samples[side].append(decode_child(root))
    result: dict[str, Any] = {}
    for side in ("after", "before"):
        result[f"decode_{side}_us"] = {
            name: round(statistics.median(s[name] for s in samples[side]), 3)
            for name in samples[side][0]
        }
    result["decode_ratio"] = {
        name: round(after / result["decode_before_us"][name], 3)
        for name, after in result["decode_after_us"].items()
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=5000, help="sequential round trips per side")
    parser.add_argument("--inflight", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="alternations of raw and transport")
    parser.add_argument("--decode-only", action="store_true", help="only the decode cost")
    parser.add_argument("--decode-baseline", type=Path, help="code to compare the decode cost to")
    parser.add_argument("--decode-rounds", type=int, default=6, help="alternations of children")
    parser.add_argument("--code-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--decode-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.decode_child:
        print(json.dumps(decode_cost()))
        return
    if args.decode_baseline is not None:
        decode = decode_ab(args.decode_baseline.resolve(), args.decode_rounds)
    else:
        decode = {"decode_us": decode_cost()}
    if args.decode_only:
        print(json.dumps({"bench": "transport-decode", **decode, "machine": machine()}))
        return
    context = multiprocessing.get_context("spawn")

    config = bench_config()
    raw_addresses = [f"tcp://127.0.0.1:{port}" for port in free_ports(2)]  # pinger's, echo's
    stop = context.Event()
    echoes = [
        context.Process(target=transport_echo, args=(config, stop)),
        context.Process(target=raw_echo, args=(*reversed(raw_addresses), stop)),
    ]
    for echo in echoes:
        echo.start()
    try:
        figures = measure(config, raw_addresses, args.count, args.inflight, args.rounds)
    finally:
        stop.set()
        for echo in echoes:
            echo.join(10)

    result = {
        "bench": "transport",
        **figures,
        "ratio": round(figures["transport_rtt_p50_us"] / figures["raw_rtt_p50_us"], 2),
        "throughput_ratio": round(figures["raw_msgs_per_s"] / figures["transport_msgs_per_s"], 2),
        "settings": {
            "count": args.count,
            "inflight": args.inflight,
            "rounds": args.rounds,
            "payload_bytes": 100,
        },
        **decode,
        "machine": machine(),
        "peak_rss_mb": max_rss_mb(resource.RUSAGE_SELF),
        "echo_peak_rss_mb": max_rss_mb(resource.RUSAGE_CHILDREN),
    }
    print(json.dumps(result))


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def max_rss_mb(who: int) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


if __name__ == "__main__":
    main()
