"""Node-to-node round trips through the transport versus raw pyzmq DEALER/ROUTER, two processes.

Prints one JSON line. Both sides answer on their I/O thread, so the figures are the transport's
own cost (envelope, poller, dispatch); `actor_` figures add a pykka actor hop on the sending side,
as a real subsystem pays. Usage: python bench/transport.py [--seconds S] [--inflight N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import msgpack
import pykka
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.transport import Inbound, Transport  # noqa: E402
from caddy.config import ClusterConfig, parse_topology  # noqa: E402

PAYLOAD = {"term": 7, "index": 123456, "data": b"x" * 100}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_config() -> ClusterConfig:
    nodes = [
        {
            "id": node_id,
            "address": f"tcp://127.0.0.1:{free_port()}",
            "client_address": f"tcp://127.0.0.1:{free_port()}",
        }
        for node_id in ("a", "b")
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


def raw_echo(endpoint: str, stop: multiprocessing.Event) -> None:
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    while not stop.is_set():
        if router.poll(100):
            identity, frame = router.recv_multipart()
            router.send_multipart([identity, msgpack.packb(msgpack.unpackb(frame))])
    router.close()


# ----- the measuring side ----------------------------------------------------------------------


def wait_connected(transport: Transport, peer: str) -> None:
    deadline = time.monotonic() + 10
    while not transport.peer_stats()[peer].hearing:
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


def measure_transport(config: ClusterConfig, count: int, inflight: int) -> dict[str, float]:
    transport = Transport(config, "a")
    handler: list = [None]
    transport.register("bench", lambda inbound: handler[0](inbound))
    transport.start()
    try:
        wait_connected(transport, "b")
        sequential = IoLoopPinger(transport, count, 1)
        handler[0] = sequential.on_pong
        rtts, _ = sequential.run()
        pipelined = IoLoopPinger(transport, count * 5, inflight)
        handler[0] = pipelined.on_pong
        _, msgs_per_s = pipelined.run()
        actor = PingActor.start(transport, count)
        handler[0] = actor.tell
        actor.tell("go")
        actor_proxy = actor.proxy()
        actor_proxy.done.get().wait(120)
        actor_rtts = actor_proxy.rtts.get()
        actor.stop()
        result = summary("transport_", rtts, msgs_per_s)
        result["actor_rtt_p50_us"] = round(statistics.median(actor_rtts) * 1e6, 1)
        return result
    finally:
        transport.stop()


def measure_raw(endpoint: str, count: int, inflight: int) -> dict[str, float]:
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    dealer.send(msgpack.packb({**PAYLOAD, "t": 0.0}))  # warm up the connection
    dealer.recv()
    rtts = []
    for _ in range(count):
        started = time.perf_counter()
        dealer.send(msgpack.packb({**PAYLOAD, "t": started}))
        msgpack.unpackb(dealer.recv())
        rtts.append(time.perf_counter() - started)
    total = count * 5
    started = time.perf_counter()
    sent = received = 0
    while received < total:
        while sent < total and sent - received < inflight:
            dealer.send(msgpack.packb({**PAYLOAD, "t": time.perf_counter()}))
            sent += 1
        msgpack.unpackb(dealer.recv())
        received += 1
    msgs_per_s = total / (time.perf_counter() - started)
    dealer.close()
    return summary("raw_", rtts, msgs_per_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=5000, help="sequential round trips")
    parser.add_argument("--inflight", type=int, default=100)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")

    config = bench_config()
    stop = context.Event()
    echo = context.Process(target=transport_echo, args=(config, stop))
    echo.start()
    try:
        transport = measure_transport(config, args.count, args.inflight)
    finally:
        stop.set()
        echo.join(10)

    raw_endpoint = f"tcp://127.0.0.1:{free_port()}"
    stop = context.Event()
    echo = context.Process(target=raw_echo, args=(raw_endpoint, stop))
    echo.start()
    try:
        raw = measure_raw(raw_endpoint, args.count, args.inflight)
    finally:
        stop.set()
        echo.join(10)

    result = {
        "bench": "transport",
        **transport,
        **raw,
        "ratio": round(transport["transport_rtt_p50_us"] / raw["raw_rtt_p50_us"], 2),
        "throughput_ratio": round(raw["raw_msgs_per_s"] / transport["transport_msgs_per_s"], 2),
        "settings": {"count": args.count, "inflight": args.inflight, "payload_bytes": 100},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
