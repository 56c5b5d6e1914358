"""The key-value service end to end: a durable 3-node cluster of real `caddy-node` processes.

Measures write and linearizable read throughput (many client processes x threads) and latency (one
sequential client), leader failover after kill -9, and node memory; prints one JSON line.
Usage: python bench/kv.py [--seconds S] [--kills N] [--processes P] [--threads T]
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing
import os
import platform
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from caddy.client import Client  # noqa: E402
from caddy.errors import CaddyError  # noqa: E402

CADDY_NODE = REPO / "bin" / "caddy-node"
NODE_IDS = ("n1", "n2", "n3")
READ_KEYS = 256  # keys written before the read phases, read round-robin
PROBE_TIMEOUT_S = 0.05  # the failover probe's wait for one round of answers
PROBE_BACKOFF_S = 0.002  # pause between probe rounds that found no leader
WARMUP_BEFORE_KILL_S = 0.3  # writes flow this long before each kill
T = TypeVar("T")


class BenchError(Exception):
    """The cluster did not reach a state the benchmark needs (no leader, a node died)."""


def free_ports(count: int) -> list[int]:
    """Distinct ports the kernel just handed out and released."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def write_topology(folder: Path) -> Path:
    """Three voters on free loopback ports, data under `folder`, every setting at its default."""
    ports = free_ports(2 * len(NODE_IDS))
    nodes = [
        {
            "id": node_id,
            "address": f"tcp://127.0.0.1:{ports[2 * i]}",
            "client_address": f"tcp://127.0.0.1:{ports[2 * i + 1]}",
        }
        for i, node_id in enumerate(NODE_IDS)
    ]
    path = folder / "topology.yaml"
    document = {"cluster": "bench", "data_dir": str(folder / "data"), "nodes": nodes}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll `predicate` until it returns something truthy; BenchError naming `what` at the end."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)
    return result


def proc_status_kb(pid: int, field_name: str) -> int:
    """A `kB` field (VmRSS, VmHWM) of /proc/PID/status; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def percentile_ms(samples_s: list[float], fraction: float) -> float:
    ordered = sorted(samples_s)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 3)


@dataclass
class Cluster:
    """The node processes of one topology; `stop()` kills every process it ever started."""

    topology: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    peak_rss_kb: dict[str, int] = field(default_factory=dict)

    def start(self, node_id: str) -> None:
        log_path = self.topology.parent / f"{node_id}.log"
        with open(log_path, "ab") as log_file:
            self.processes[node_id] = subprocess.Popen(
                [sys.executable, str(CADDY_NODE), str(self.topology), "--node", node_id],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the benchmark, which then kills the nodes
            )

    def kill(self, node_id: str) -> None:
        """kill -9, after noting the process's peak RSS (it dies with the process)."""
        self.note_peak_rss()
        process = self.processes[node_id]
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def note_peak_rss(self) -> None:
        for node_id, process in self.processes.items():
            peak = proc_status_kb(process.pid, "VmHWM")
            self.peak_rss_kb[node_id] = max(self.peak_rss_kb.get(node_id, 0), peak)

    def check_alive(self) -> None:
        for node_id, process in self.processes.items():
            if process.poll() is not None:
                log = self.topology.parent / f"{node_id}.log"
                tail = log.read_text(errors="replace")[-2000:]
                raise BenchError(f"node {node_id} exited ({process.returncode}):\n{tail}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)


# ----- status helpers ---------------------------------------------------------------------------


def leader_status(client: Client) -> tuple[str, dict[str, Any]] | None:
    """The leader of the highest term any node reports, with its status document."""
    leaders = [
        (status["term"], node_id, status)
        for node_id, status in client.statuses().items()
        if status is not None and status.get("state") == "leader"
    ]
    if not leaders:
        return None
    _, node_id, status = max(leaders, key=lambda found: (found[0], found[1]))
    return node_id, status


def caught_up(client: Client) -> bool:
    """Every node answers, one leads, and every applied index equals the leader's."""
    statuses = client.statuses()
    if any(status is None for status in statuses.values()):
        return False
    found = leader_status(client)
    if found is None:
        return False
    target = found[1]["applied_index"]
    return all(status["applied_index"] == target for status in statuses.values())


# ----- load generators (run in spawned processes) -------------------------------------------------


def load_worker(
    topology: str,
    op: str,
    threads: int,
    seconds: float,
    value: bytes,
    start: Any,
    ready: Any,
    results: Any,
) -> None:
    """`threads` threads, each with its own Client, doing `op` back to back for `seconds`."""
    tag = uuid.uuid4().hex[:8]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    go = threading.Event()

    def run(slot: int) -> None:
        with Client(topology, timeout=10.0) as client:
            operation = _operation(client, op, f"{tag}-{slot}", value)
            operation(0)  # finds the leader and opens the connections before timing starts
            ready.put(1)
            go.wait()
            samples = latencies[slot]
            deadline = time.perf_counter() + seconds
            i = 1
            while (before := time.perf_counter()) < deadline:
                try:
                    operation(i)
                except CaddyError:
                    errors[slot] += 1
                    continue
                samples.append(time.perf_counter() - before)
                i += 1

    workers = [threading.Thread(target=run, args=(slot,)) for slot in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    go.set()
    for worker in workers:
        worker.join()
    results.put(([s for samples in latencies for s in samples], sum(errors)))


def _operation(client: Client, op: str, tag: str, value: bytes) -> Callable[[int], Any]:
    if op == "put":
        return lambda i: client.put(f"w-{tag}-{i}", value)
    return lambda i: client.get(f"r-{i % READ_KEYS}")


def run_load(
    topology: Path, op: str, processes: int, threads: int, seconds: float, value: bytes
) -> dict[str, float]:
    """Throughput and latency of `processes` x `threads` closed-loop clients doing `op`."""
    spawn = multiprocessing.get_context("spawn")  # no zmq context is ever forked
    start, ready, results = spawn.Event(), spawn.Queue(), spawn.Queue()
    workers = [
        spawn.Process(
            target=load_worker,
            args=(str(topology), op, threads, seconds, value, start, ready, results),
            daemon=True,
        )
        for _ in range(processes)
    ]
    try:
        for worker in workers:
            worker.start()
        for _ in range(processes * threads):
            _get_from_workers(ready, workers, 60)
        started = time.perf_counter()
        start.set()
        outcomes = [_get_from_workers(results, workers, seconds + 60) for _ in workers]
        elapsed = time.perf_counter() - started
    finally:
        for worker in workers:
            if worker.pid is not None:
                worker.terminate()
                worker.join(timeout=10)
    samples = [s for outcome in outcomes for s in outcome[0]]
    if not samples:
        raise BenchError(f"no {op} completed")
    return {
        "ops_per_s": round(len(samples) / elapsed),
        "p50_ms": percentile_ms(samples, 0.5),
        "p99_ms": percentile_ms(samples, 0.99),
        "errors": sum(outcome[1] for outcome in outcomes),
    }


def _get_from_workers(channel: Any, workers: list[Any], timeout: float) -> Any:
    """The next item the workers send; BenchError as soon as one of them died instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return channel.get(timeout=0.2)
        except queue.Empty:
            if any(worker.exitcode not in (None, 0) for worker in workers):
                raise BenchError("a client process failed (its traceback is above)") from None
    raise BenchError(f"the client processes sent nothing for {timeout:g} s")


# ----- failover ---------------------------------------------------------------------------------


class FailoverProbe:
    """Writes in a tight loop to every live node at once; only a leader can commit such a write.

    Asking all live nodes in parallel (followers answer with a redirect) times the cluster's
    failover itself, free of any client's node-discovery and retry policy.
    """

    def __init__(self, topology: Path) -> None:
        self.client = Client(topology, timeout=PROBE_TIMEOUT_S)
        self.session = uuid.uuid4().hex
        self.seq = 0

    def write_once(self, targets: list[str]) -> str | None:
        """One write offered to `targets`; the id of the node that committed it, if any."""
        self.seq += 1
        body = {
            "key": "failover-probe",
            "value": self.seq,
            "client": self.session,
            "seq": self.seq,
            "ack": self.seq,
        }
        answers = self.client.gather(targets, "kv.put", body, PROBE_TIMEOUT_S, raw=True)
        for node_id, answer in answers.items():
            if answer is not None and answer.kind == "kv.ok":
                return node_id
        return None

    def until_committed(self, targets: list[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (node_id := self.write_once(targets)) is not None:
                return node_id
            time.sleep(PROBE_BACKOFF_S)
        raise BenchError(f"no write committed within {timeout:g} s")

    def close(self) -> None:
        self.client.close()


class BackgroundWriter(threading.Thread):
    """A plain Client with default settings writing back to back: what an application sees."""

    def __init__(self, topology: Path) -> None:
        super().__init__(daemon=True)
        self.client = Client(topology)
        self.successes: list[float] = []
        self.stopping = threading.Event()
        self.writing = threading.Event()  # cleared while the nodes catch up between rounds

    def run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            if not self.writing.wait(0.05):
                continue
            i += 1
            try:
                self.client.put("failover-background", i)
            except CaddyError:
                continue
            self.successes.append(time.perf_counter())

    def first_success_after(self, moment: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            successes = self.successes
            position = bisect.bisect_right(successes, moment)
            if position < len(successes):
                return successes[position]
            time.sleep(0.005)
        raise BenchError(f"the background client committed nothing within {timeout:g} s")

    def stop(self) -> None:
        self.stopping.set()
        self.writing.set()
        self.join(timeout=30)
        self.client.close()


def measure_failover(cluster: Cluster, client: Client, kills: int) -> dict[str, Any]:
    """kill -9 the leader `kills` times; time from the kill to the first write of a new leader."""
    probe = FailoverProbe(cluster.topology)
    background = BackgroundWriter(cluster.topology)
    background.start()
    probe_ms: list[float] = []
    client_ms: list[float] = []
    try:
        for _ in range(kills):
            background.writing.clear()
            wait_until(lambda: caught_up(client), 60, "every node to catch up")
            old_leader, old_status = wait_until(lambda: leader_status(client), 10, "a leader")
            background.writing.set()
            everyone = list(NODE_IDS)
            probe.until_committed(everyone, 5)
            warm_until = time.monotonic() + WARMUP_BEFORE_KILL_S
            while time.monotonic() < warm_until:
                probe.write_once(everyone)
            survivors = [node_id for node_id in NODE_IDS if node_id != old_leader]
            killed_at = time.perf_counter()
            cluster.kill(old_leader)
            new_leader = probe.until_committed(survivors, 10)
            committed_at = time.perf_counter()
            probe_ms.append((committed_at - killed_at) * 1000)
            status = client.status(new_leader)
            if status["term"] <= old_status["term"] or status["leader"] == old_leader:
                raise BenchError(f"leadership did not change: {old_status} -> {status}")
            client_ms.append((background.first_success_after(killed_at, 10) - killed_at) * 1000)
            cluster.start(old_leader)
            cluster.check_alive()
        background.writing.clear()
        wait_until(lambda: caught_up(client), 60, "every node to catch up")
    finally:
        background.stop()
        probe.close()
    return {
        "failover_p50_ms": round(statistics.median(probe_ms), 1),
        "failover_max_ms": round(max(probe_ms), 1),
        "failover_min_ms": round(min(probe_ms), 1),
        "failover_client_p50_ms": round(statistics.median(client_ms), 1),
        "failover_client_max_ms": round(max(client_ms), 1),
        "failover_rounds_ms": [round(ms) for ms in probe_ms],
    }


# ----- main ---------------------------------------------------------------------------------------


def prefill(client: Client, value: bytes) -> None:
    for i in range(READ_KEYS):
        client.put(f"r-{i}", value)


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    cluster = Cluster(write_topology(folder))
    try:
        for node_id in NODE_IDS:
            cluster.start(node_id)
        client = Client(cluster.topology, timeout=5.0)
        wait_until(lambda: caught_up(client), 30, "a leader and three answering nodes")
        cluster.check_alive()
        idle_rss_kb = max(proc_status_kb(p.pid, "VmRSS") for p in cluster.processes.values())
        value = b"x" * args.value_bytes
        prefill(client, value)
        layout = (args.processes, args.threads)
        results: dict[str, Any] = {}
        phases = [
            ("write", "put", layout),
            ("write_seq", "put", (1, 1)),
            ("read", "get", layout),
            ("read_seq", "get", (1, 1)),
        ]
        for name, op, (processes, threads) in phases:
            results[name] = run_load(cluster.topology, op, processes, threads, args.seconds, value)
            cluster.check_alive()
            cluster.note_peak_rss()
        failover = measure_failover(cluster, client, args.kills) if args.kills else {}
        cluster.note_peak_rss()
        client.close()
    finally:
        cluster.stop()
    return {
        "write_ops_per_s": results["write"]["ops_per_s"],
        "write_concurrent_p50_ms": results["write"]["p50_ms"],
        "write_concurrent_p99_ms": results["write"]["p99_ms"],
        "write_p50_ms": results["write_seq"]["p50_ms"],
        "write_p99_ms": results["write_seq"]["p99_ms"],
        "write_seq_ops_per_s": results["write_seq"]["ops_per_s"],
        "read_ops_per_s": results["read"]["ops_per_s"],
        "read_concurrent_p50_ms": results["read"]["p50_ms"],
        "read_p50_ms": results["read_seq"]["p50_ms"],
        "read_p99_ms": results["read_seq"]["p99_ms"],
        "read_seq_ops_per_s": results["read_seq"]["ops_per_s"],
        "client_errors": sum(phase["errors"] for phase in results.values()),
        **failover,
        "peak_rss_mb": {n: round(kb / 1024, 1) for n, kb in sorted(cluster.peak_rss_kb.items())},
        "idle_rss_mb": round(idle_rss_kb / 1024, 1),
        "settings": {
            "nodes": len(NODE_IDS),
            "durable": "SQLite WAL, fsync per batch",
            "timings": "topology defaults (tick 10 ms, election 150-300 ms, heartbeat 50 ms)",
            "concurrent_layout": f"{args.processes} processes x {args.threads} threads",
            "in_flight": args.processes * args.threads,
            "sequential_layout": "1 process x 1 thread",
            "seconds_per_phase": args.seconds,
            "value_bytes": args.value_bytes,
            "kills": args.kills,
            "failover_measure": "kill -9 to the first write committed by the new leader, "
            "probe offering each write to every live node (50 ms timeout); failover_client_* "
            "is a default Client writing back to back",
            "shared_cpus": "the 3 nodes and every client process share the same CPUs",
        },
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_at_start": [round(x, 2) for x in args.load_at_start],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each load phase")
    parser.add_argument("--kills", type=int, default=20, help="leader kill -9 rounds")
    parser.add_argument("--processes", type=int, default=4, help="concurrent client processes")
    parser.add_argument("--threads", type=int, default=16, help="client threads per process")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, data)")
    args = parser.parse_args()
    args.load_at_start = os.getloadavg()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the finally kills the nodes
    folder = Path(tempfile.mkdtemp(prefix="caddy-bench-kv-"))
    try:
        print(json.dumps(run(args, folder)), flush=True)
    except KeyboardInterrupt:
        print("interrupted; every node and client process was stopped", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if args.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", str(folder)], check=False)


if __name__ == "__main__":
    main()
