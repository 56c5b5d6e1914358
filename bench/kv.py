"""The key-value service end to end: a durable 3-node cluster of real `caddy-node` processes.

Measures write throughput with 64 writes in flight (AsyncClient coroutines in one client process,
the headline `write_ops_per_s`; the same in two processes; blocking `Client` threads in four),
linearizable read throughput, latency of one sequential client, leader failover after kill -9,
and node memory; prints one JSON line.
Usage: python bench/kv.py [--seconds S] [--kills N] [--processes P] [--threads T]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import multiprocessing
import os
import platform
import queue
import signal
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from actors import local_cluster  # noqa: E402
from actors.local_cluster import LocalCluster  # noqa: E402
from caddy.async_client import AsyncClient  # noqa: E402
from caddy.client import Client  # noqa: E402
from caddy.errors import CaddyError  # noqa: E402

NODE_IDS = ("n1", "n2", "n3")
READ_KEYS = 256  # keys written before the read phases, read round-robin
PROBE_TIMEOUT_S = 0.05  # the failover probe's wait for one round of answers
PROBE_BACKOFF_S = 0.002  # pause between probe rounds that found no leader
WARMUP_BEFORE_KILL_S = 0.3  # writes flow this long before each kill
POLL_S = 0.01  # how often a wait for a cluster state looks again
wait_until = partial(local_cluster.wait_until, every=POLL_S)


class BenchError(Exception):
    """The cluster did not reach a state the benchmark needs (no leader, a client failed)."""


def percentile_ms(samples_s: list[float], fraction: float) -> float:
    ordered = sorted(samples_s)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 3)


class Cluster(LocalCluster):
    """The benchmark's three nodes, noting each one's peak RSS before it is killed."""

    def __init__(self, topology: Path) -> None:
        super().__init__(topology)
        self.peak_rss_kb: dict[str, int] = {}

    def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        """kill -9, after noting the process's peak RSS (it dies with the process)."""
        self.note_peak_rss()
        super().kill(node_id, sig)

    def note_peak_rss(self) -> None:
        for node_id, peak in self.memory_kb("VmHWM").items():
            self.peak_rss_kb[node_id] = max(self.peak_rss_kb.get(node_id, 0), peak)


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


def async_load_worker(
    topology: str,
    tasks: int,
    seconds: float,
    value: bytes,
    start: Any,
    ready: Any,
    results: Any,
) -> None:
    """`tasks` coroutines sharing one AsyncClient, each writing back to back for `seconds`."""
    asyncio.run(_async_load(topology, tasks, seconds, value, start, ready, results))


async def _async_load(
    topology: str, tasks: int, seconds: float, value: bytes, start: Any, ready: Any, results: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    errors = 0
    async with AsyncClient(topology, timeout=10.0) as client:
        await client.put(f"w-{tag}-warm", value)  # finds the leader and connects before timing
        for _ in range(tasks):
            ready.put(1)
        await asyncio.get_running_loop().run_in_executor(None, start.wait)

        async def run(slot: int) -> None:
            nonlocal errors
            deadline = time.perf_counter() + seconds
            i = 0
            while (before := time.perf_counter()) < deadline:
                try:
                    await client.put(f"w-{tag}-{slot}-{i}", value)
                except CaddyError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - before)
                i += 1

        await asyncio.gather(*(run(slot) for slot in range(tasks)))
    results.put((latencies, errors))


def _operation(client: Client, op: str, tag: str, value: bytes) -> Callable[[int], Any]:
    """One closed-loop step of `op`: put, get, and for bench/locks.py put-fenced (writes fenced
    by a lock this client holds throughout), lock-cycle (acquire and release a name of its own;
    lock-cycle-nowait without waiting for the release's commit) and lock-contend (wait in line
    for one name shared by every client, then release)."""
    if op == "put":
        return lambda i: client.put(f"w-{tag}-{i}", value)
    if op == "put-fenced":
        lock = client.lock(f"fence-{tag}", ttl=30.0)
        return lambda i: client.put(f"w-{tag}-{i}", value, fence=lock)
    if op == "lock-cycle":
        return lambda i: client.lock(f"cycle-{tag}", ttl=10.0).release()
    if op == "lock-cycle-nowait":  # the release not waited for: it shares the next acquire's entry
        return lambda i: client.lock(f"cycle-{tag}", ttl=10.0).release(wait=False)
    if op == "lock-contend":
        return lambda i: client.lock("contended", ttl=10.0, wait=60.0).release()
    return lambda i: client.get(f"r-{i % READ_KEYS}")


def run_load(
    topology: Path, op: str, processes: int, threads: int, seconds: float, value: bytes
) -> dict[str, float]:
    """Throughput and latency of `processes` x `threads` closed-loop clients doing `op`."""
    spawn = multiprocessing.get_context("spawn")  # no zmq context is ever forked
    start, ready, results = spawn.Event(), spawn.Queue(), spawn.Queue()
    if op == "put-async":  # `threads` coroutines per process over one AsyncClient
        target, head = async_load_worker, (str(topology),)
    else:
        target, head = load_worker, (str(topology), op)
    workers = [
        spawn.Process(
            target=target,
            args=(*head, threads, seconds, value, start, ready, results),
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
    # every setting at its default
    topology = local_cluster.write_topology(
        folder, len(NODE_IDS), cluster="bench", data_dir=str(folder / "data")
    )
    cluster = Cluster(topology)
    try:
        cluster.start(*NODE_IDS)
        client = Client(cluster.topology, timeout=5.0)
        wait_until(lambda: caught_up(client), 30, "a leader and three answering nodes")
        cluster.check_alive()
        idle_rss_kb = max(cluster.memory_kb("VmRSS").values())
        value = b"x" * args.value_bytes
        prefill(client, value)
        layout = (args.processes, args.threads)
        in_flight = args.processes * args.threads
        results: dict[str, Any] = {}
        # The headline phase runs last of the writes, on the largest store (least in its favour).
        phases = [
            ("write_threads", "put", layout),
            ("write_2proc", "put-async", (2, in_flight // 2)),
            ("write", "put-async", (1, in_flight)),
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
        cluster.cleanup()
    return {
        "write_ops_per_s": results["write"]["ops_per_s"],
        "write_concurrent_p50_ms": results["write"]["p50_ms"],
        "write_concurrent_p99_ms": results["write"]["p99_ms"],
        "write_2proc_ops_per_s": results["write_2proc"]["ops_per_s"],
        "write_2proc_p50_ms": results["write_2proc"]["p50_ms"],
        "write_threads_ops_per_s": results["write_threads"]["ops_per_s"],
        "write_threads_p50_ms": results["write_threads"]["p50_ms"],
        "write_threads_p99_ms": results["write_threads"]["p99_ms"],
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
            "write_layout": f"1 process x {in_flight} coroutines on one AsyncClient",
            "write_2proc_layout": f"2 processes x {in_flight // 2} coroutines on one AsyncClient "
            "each",
            "write_threads_layout": f"{args.processes} processes x {args.threads} threads of "
            "Client (also the read phase)",
            "in_flight": in_flight,
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
    print_run(run, args, "caddy-bench-kv-")


def print_run(
    run: Callable[[argparse.Namespace, Path], dict[str, Any]], args: argparse.Namespace, prefix: str
) -> None:
    """Run a benchmark in a scratch folder and print its JSON line; SIGTERM and Ctrl-C unwind
    through the cleanup, so no node or client process outlives it."""
    args.load_at_start = os.getloadavg()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the finally kills the nodes
    with local_cluster.scratch_folder(prefix, keep=args.keep) as folder:
        if args.keep:
            print(f"keeping {folder}", file=sys.stderr)
        try:
            print(json.dumps(run(args, folder)), flush=True)
        except KeyboardInterrupt:
            print("interrupted; every node and client process was stopped", file=sys.stderr)
            raise SystemExit(130) from None


if __name__ == "__main__":
    main()
