"""Side traffic: how long a request for another actor than Raft waits while Raft is loaded.

A durable 3-node cluster of real `caddy-node` processes. Once a node runs, its Raft actor's thread
reads the routers and `tell`s what is not for Raft (gossip, `client.*`) to its actor, so such a
frame may wait behind Raft's work (the I/O thread stands in after READER_STANDIN_MS). This times
`client.status` round trips (answered by the ClientEndpointActor) to the leader and to a follower,
idle and while a separate process drives 64 writes in flight (the `AsyncClient` load of
`bench/kv.py`'s write phase), and beside them the leader's linearizable `kv.get` (the Raft path)
under the same conditions. Probes go from raw DEALERs in this process, one probe round at a random
moment every ~`--interval-ms` (uniform 0-2x), each round asking, in a random order, the leader's
status, a follower's status, the leader's `kv.get` and, as a control for CPU contention on the
shared cores, a bare pyzmq echo process, one at a time. Prints one JSON line.
Usage: python bench/side_traffic.py [--seconds S] [--interval-ms MS] [--in-flight N]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/kv.py
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import zmq  # noqa: E402
from kv import (  # noqa: E402
    NODE_IDS,
    BenchError,
    _get_from_workers,
    async_load_worker,
    caught_up,
    leader_status,
    print_run,
    wait_until,
)

from actors import local_cluster  # noqa: E402
from actors.local_cluster import LocalCluster  # noqa: E402
from caddy.client import Client, client_codec, socket_options  # noqa: E402
from caddy.config import load_topology  # noqa: E402
from caddy.wire import Codec  # noqa: E402

PROBE_TIMEOUT_S = 1.0  # a probe unanswered this long counts as lost
LOAD_WARMUP_S = 0.5  # the writers run this long before the probes start
LOAD_TAIL_S = 0.2  # and the probes stop this long before the writers do
READ_KEY = "side-traffic-read"
OVER_MS = (2, 5, 10, 20)  # the share of probes slower than each of these is reported


def echo_server(address: str, stop: Any) -> None:
    """The control: a bare pyzmq ROUTER in a process of its own, sending every frame back. Its
    round trip under load is what CPU contention alone costs a probe on these shared cores."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(address)
    while not stop.is_set():
        if router.poll(100):
            router.send_multipart(router.recv_multipart())
    router.close(0)
    context.term()


class CpuMeter:
    """CPU used on the machine over a phase, split into this bench's processes (nodes, writer,
    prober, echo) and everything else: the machine is shared, and this is the noise to report."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.tick = os.sysconf("SC_CLK_TCK")
        self.started = self._sample()

    @staticmethod
    def _busy_jiffies() -> int:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
        idle, iowait = fields[3], fields[4]
        return sum(fields[:8]) - idle - iowait  # user nice system idle iowait irq softirq steal

    def _ours_jiffies(self) -> int:
        total = 0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:  # gone: its share counts as foreign from its last sample on
                continue
            total += int(fields[11]) + int(fields[12])  # utime stime, every thread
        return total

    def _sample(self) -> tuple[float, int, int]:
        return time.monotonic(), self._busy_jiffies(), self._ours_jiffies()

    def stop(self) -> dict[str, float]:
        """Each as a percentage of one CPU (the machine has cpu_count of them)."""
        (t0, busy0, ours0), (t1, busy1, ours1) = self.started, self._sample()
        scale = 100 / self.tick / max(t1 - t0, 1e-9)
        return {
            "busy_cpu_pct": round((busy1 - busy0) * scale),
            "bench_cpu_pct": round((ours1 - ours0) * scale),
            "foreign_cpu_pct": round(max(0, (busy1 - busy0) - (ours1 - ours0)) * scale),
        }


class Prober:
    """Sequential request/answer round trips over one raw DEALER per node (or other address)."""

    def __init__(self, topology: Path, addresses: dict[str, str]) -> None:
        self.config = load_topology(topology)
        self.codec: Codec = client_codec(self.config)
        self.context = zmq.Context()
        self.sockets: dict[str, zmq.Socket] = {}
        for name, address in addresses.items():
            sock = self.context.socket(zmq.DEALER)
            socket_options(sock)
            sock.connect(address)
            self.sockets[name] = sock
        self.request_ids = itertools.count(1)

    def ask(self, target: str, kind: str, body: dict[str, Any]) -> tuple[float, str] | None:
        """(round trip in seconds, answer kind), or None when no answer came in time."""
        sock = self.sockets[target]
        request_id = next(self.request_ids)
        frame = self.codec.encode(kind, body, request_id)
        started = time.perf_counter()
        sock.send(frame)
        deadline = started + PROBE_TIMEOUT_S
        while (remaining := deadline - time.perf_counter()) > 0:
            if not sock.poll(remaining * 1000):
                break
            envelope = self.codec.decode(sock.recv())
            if envelope.request_id == request_id:
                return time.perf_counter() - started, envelope.kind
        return None

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close(0)
        self.context.term()


Probes = dict[str, tuple[str, str, dict[str, Any], str]]  # name: (target, kind, body, answer)


def probe_for(
    prober: Prober, probes: Probes, seconds: float, interval_s: float, rng: random.Random
) -> dict[str, dict[str, Any]]:
    """Probe rounds for `seconds`; the round trips of each named probe, summarized."""
    samples: dict[str, list[float]] = {name: [] for name in probes}
    lost = dict.fromkeys(probes, 0)
    wrong = dict.fromkeys(probes, 0)
    names = list(probes)
    deadline = time.perf_counter() + seconds
    next_round = time.perf_counter()
    while (now := time.perf_counter()) < deadline:
        if now < next_round:
            time.sleep(next_round - now)
        next_round = time.perf_counter() + rng.uniform(0, 2 * interval_s)
        rng.shuffle(names)
        for name in names:
            target, kind, body, expected = probes[name]
            answer = prober.ask(target, kind, body)
            if answer is None:
                lost[name] += 1
            elif answer[1] != expected:
                wrong[name] += 1
            else:
                samples[name].append(answer[0])
    return {name: summarize(samples[name], lost[name], wrong[name]) for name in probes}


def summarize(samples_s: list[float], lost: int, wrong: int) -> dict[str, Any]:
    if not samples_s:
        return {"count": 0, "lost": lost, "wrong_answer": wrong}
    ordered = sorted(samples_s)

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 3)

    return {
        "count": len(ordered),
        "p50_ms": at(0.5),
        "p90_ms": at(0.9),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
        **{
            f"over_{ms}ms_pct": round(
                100 * sum(1 for s in ordered if s > ms / 1000) / len(ordered), 2
            )
            for ms in OVER_MS
        },
        "lost": lost,
        "wrong_answer": wrong,
    }


def probe_under_load(
    topology: Path,
    prober: Prober,
    probes: Probes,
    args: argparse.Namespace,
    rng: random.Random,
    pids: list[int],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, float]]:
    """The probes while one spawned process of `--in-flight` AsyncClient coroutines writes."""
    spawn = multiprocessing.get_context("spawn")  # no zmq context is ever forked
    start, ready, results = spawn.Event(), spawn.Queue(), spawn.Queue()
    load_seconds = args.seconds + LOAD_WARMUP_S + LOAD_TAIL_S
    worker = spawn.Process(
        target=async_load_worker,
        args=(
            str(topology),
            args.in_flight,
            load_seconds,
            b"x" * args.value_bytes,
            start,
            ready,
            results,
        ),
        daemon=True,
    )
    try:
        worker.start()
        for _ in range(args.in_flight):
            _get_from_workers(ready, [worker], 60)
        started = time.perf_counter()
        start.set()
        time.sleep(LOAD_WARMUP_S)
        meter = CpuMeter([*pids, worker.pid])
        figures = probe_for(prober, probes, args.seconds, args.interval_ms / 1000, rng)
        cpu = meter.stop()
        latencies, errors = _get_from_workers(results, [worker], load_seconds + 60)
        elapsed = time.perf_counter() - started
    finally:
        if worker.pid is not None:
            worker.terminate()
            worker.join(timeout=10)
    if not latencies:
        raise BenchError("no write completed")
    ordered = sorted(latencies)
    writes = {
        "write_ops_per_s": round(len(ordered) / min(elapsed, load_seconds)),
        "write_p50_ms": round(ordered[len(ordered) // 2] * 1000, 3),
        "write_p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 3),
        "write_errors": errors,
    }
    return figures, writes, cpu


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    topology = local_cluster.write_topology(  # every setting at its default, as bench/kv.py
        folder, len(NODE_IDS), cluster="bench", data_dir=str(folder / "data")
    )
    cluster = LocalCluster(topology)
    rng = random.Random(args.seed)
    spawn = multiprocessing.get_context("spawn")
    echo_address = f"tcp://127.0.0.1:{local_cluster.free_ports(1)[0]}"
    echo_stop = spawn.Event()
    echo = spawn.Process(target=echo_server, args=(echo_address, echo_stop), daemon=True)
    try:
        echo.start()
        cluster.start(*NODE_IDS)
        with Client(topology, timeout=5.0) as client:
            wait_until(lambda: caught_up(client), 30, "a leader and three answering nodes")
            client.put(READ_KEY, "x")
            leader, leader_at_start = wait_until(lambda: leader_status(client), 10, "a leader")
        follower = min(node_id for node_id in NODE_IDS if node_id != leader)
        cluster.check_alive()
        config = cluster.config
        prober = Prober(
            topology,
            {
                leader: config.node(leader).client_address,
                follower: config.node(follower).client_address,
                "echo": echo_address,
            },
        )
        probes: Probes = {
            "leader_status": (leader, "client.status", {}, "client.status.ok"),
            "follower_status": (follower, "client.status", {}, "client.status.ok"),
            "leader_get": (leader, "kv.get", {"key": READ_KEY}, "kv.ok"),
            "echo": ("echo", "client.status", {}, "client.status"),
        }
        try:
            probe_for(prober, probes, 0.3, args.interval_ms / 1000, rng)  # connect, warm up
            pids = [os.getpid(), echo.pid, *(p.pid for p in cluster.nodes.values())]
            meter = CpuMeter(pids)
            idle = probe_for(prober, probes, args.seconds, args.interval_ms / 1000, rng)
            idle_cpu = meter.stop()
            cluster.check_alive()
            loaded, writes, load_cpu = probe_under_load(topology, prober, probes, args, rng, pids)
            cluster.check_alive()
        finally:
            prober.close()
        with Client(topology, timeout=5.0) as client:
            found = wait_until(lambda: leader_status(client), 10, "a leader after the run")
    finally:
        cluster.cleanup()
        echo_stop.set()
        echo.join(timeout=5)
        if echo.is_alive():
            echo.terminate()
    # On a starved machine an election can happen mid-run: the figures are printed, flagged.
    elections = found[1]["term"] - leader_at_start["term"]
    if elections or found[0] != leader:
        print(f"leadership moved during the run: {leader} -> {found[0]}", file=sys.stderr)

    def excess(name: str, field: str) -> float:
        return round(loaded[name][field] - idle[name][field], 3)

    return {
        "leader_changed": bool(elections or found[0] != leader),  # then `leader_*` mix nodes
        "leader_status_idle_p50_ms": idle["leader_status"]["p50_ms"],
        "leader_status_idle_p99_ms": idle["leader_status"]["p99_ms"],
        "leader_status_load_p50_ms": loaded["leader_status"]["p50_ms"],
        "leader_status_load_p99_ms": loaded["leader_status"]["p99_ms"],
        "leader_status_load_max_ms": loaded["leader_status"]["max_ms"],
        "leader_status_p99_excess_ms": excess("leader_status", "p99_ms"),
        "follower_status_load_p99_ms": loaded["follower_status"]["p99_ms"],
        "follower_status_p99_excess_ms": excess("follower_status", "p99_ms"),
        "leader_get_load_p99_ms": loaded["leader_get"]["p99_ms"],
        "echo_load_p99_ms": loaded["echo"]["p99_ms"],
        "echo_p99_excess_ms": excess("echo", "p99_ms"),
        **writes,
        "idle": idle,
        "load": loaded,
        "settings": {
            "nodes": len(NODE_IDS),
            "leader": leader,
            "terms_passed": elections,
            "follower": follower,
            "durable": "SQLite WAL, fsync per batch (topology defaults)",
            "load": f"1 process x {args.in_flight} coroutines on one AsyncClient writing "
            f"{args.value_bytes}-byte values back to back (bench/kv.py's write phase)",
            "probes": "raw DEALERs from the bench process, sequential; one round of the four "
            f"probes (random order) every uniform(0, {2 * args.interval_ms:g}) ms",
            "echo": "control: the same frame to a bare pyzmq ROUTER echo in a process of its own "
            "(what CPU contention alone costs a round trip)",
            "seconds_per_phase": args.seconds,
            "interval_ms": args.interval_ms,
            "probe_timeout_s": PROBE_TIMEOUT_S,
            "baseline": "the idle phase of the same run (same nodes, same probes, no writes)",
            "shared_cpus": "the 3 nodes, the writer process and the prober share the same CPUs",
        },
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_at_start": [round(x, 2) for x in args.load_at_start],
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
            "cpu_idle_phase": idle_cpu,
            "cpu_load_phase": load_cpu,
            "cpu_note": "percent of one CPU; foreign = the machine's busy time minus this "
            "bench's processes (other work on the shared machine)",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="mean probe-round gap")
    parser.add_argument("--in-flight", type=int, default=64, help="writes in flight under load")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None, help="for the probes' timing")
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, data)")
    args = parser.parse_args()
    print_run(run, args, "caddy-bench-side-")


if __name__ == "__main__":
    main()
