"""Locks, fencing and the minority side end to end: a durable 3-node cluster of real `caddy-node`
processes on per-node 127.x.y.z addresses, every setting at its default. Measures lock acquire +
release cycles/s (one client; 16 clients on names of their own), handovers/s among 16 clients
contending for one name, fenced against unfenced writes/s (64 Client threads in 4 processes,
alternated in the same run), and, where iptables can be used (root), the time from cutting a
follower off to its `has_quorum: false` and the latency of the `no_quorum` answers it then
gives (writes sent straight to it). Beside them, where etcd is installed, etcd's lock figures
from `bench/etcd_locks.py`. Prints one JSON line.
Usage: python bench/locks.py [--seconds S] [--cuts N] [--no-etcd] [--keep]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/kv.py, bench/etcd_locks.py

from kv import Cluster, caught_up, percentile_ms, print_run, run_load  # noqa: E402

from actors import local_cluster  # noqa: E402
from actors.local_cluster import Firewall, wait_until  # noqa: E402
from caddy.client import Client  # noqa: E402

NODE_IDS = ("n1", "n2", "n3")
NO_QUORUM_PROBES = 200  # writes sent to the cut-off node in each round
POLL_S = 0.005  # how often the cut-off node's quorum view is asked


def partition_rounds(cluster: Cluster, hosts: dict[str, str], rounds: int) -> dict[str, Any]:
    """Cut a follower off `rounds` times (the two followers in turn): how long until it says it
    has no quorum, and how fast it then answers writes `no_quorum`."""
    detections: list[float] = []
    answers: list[float] = []
    firewall = Firewall()
    with Client(cluster.topology, timeout=10) as client, Client(cluster.topology, 1) as probe:
        try:
            for round_number in range(rounds):
                leader = wait_until(client.leader, 20, "a leader")
                node = [n for n in sorted(hosts) if n != leader][round_number % 2]
                wait_until(lambda n=node: probe.status(n)["quorum"]["has_quorum"], 20, "quorum")
                cut_at = time.monotonic()
                for other in set(hosts) - {node}:
                    firewall.cut(hosts[node], hosts[other])
                while probe.status(node)["quorum"]["has_quorum"]:
                    time.sleep(POLL_S)
                detections.append(time.monotonic() - cut_at)
                answers.extend(no_quorum_answers(probe, node, round_number))
                firewall.heal()
                wait_until(lambda: caught_up(client), 30, "the healed cluster to catch up")
        finally:
            firewall.heal()
    return {
        "detection_median_ms": round(statistics.median(detections) * 1000, 1),
        "detection_max_ms": round(max(detections) * 1000, 1),
        "detection_ms": [round(d * 1000) for d in detections],
        "no_quorum_p50_ms": percentile_ms(answers, 0.5),
        "no_quorum_p99_ms": percentile_ms(answers, 0.99),
        "no_quorum_answers": len(answers),
    }


def no_quorum_answers(probe: Client, node: str, round_number: int) -> list[float]:
    """Round trips of writes sent straight to `node`, each answered `no_quorum`."""
    latencies = []
    for seq in range(1, NO_QUORUM_PROBES + 1):
        write = {"key": "k", "value": 1, "client": f"minority-{round_number}", "seq": seq}
        sent = time.perf_counter()
        answer = probe.gather([node], "kv.put", {**write, "ack": seq}, 5, raw=True)[node]
        if answer is None or answer.body.get("code") != "no_quorum":
            raise RuntimeError(f"{node}, cut off, answered {answer!r}")
        latencies.append(time.perf_counter() - sent)
    return latencies


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    base = f"127.{random.randrange(1, 255)}.{random.randrange(0, 255)}"
    hosts = dict(zip(NODE_IDS, [f"{base}.{i}" for i in (2, 3, 4)], strict=True))
    topology = local_cluster.write_topology(
        folder,
        len(NODE_IDS),
        cluster="bench",
        data_dir=str(folder / "data"),
        hosts=list(hosts.values()),
    )
    cluster = Cluster(topology)
    value = b"x" * 100
    results: dict[str, Any] = {}
    try:
        cluster.start(*NODE_IDS)
        with Client(topology, timeout=5.0) as client:
            wait_until(lambda: caught_up(client), 30, "a leader and three answering nodes")
        load = lambda op, processes, threads: run_load(  # noqa: E731
            topology, op, processes, threads, args.seconds, value
        )
        results["cycle_1"] = load("lock-cycle", 1, 1)
        results["cycle_1_nowait"] = load("lock-cycle-nowait", 1, 1)
        results["cycle_16"] = load("lock-cycle", 4, 4)
        results["contend_16"] = load("lock-contend", 4, 4)
        unfenced, fenced = [], []
        for _ in range(2):  # alternated, so that a slow moment of the machine hits both
            unfenced.append(load("put", 4, 16)["ops_per_s"])
            fenced.append(load("put-fenced", 4, 16)["ops_per_s"])
        results["writes"] = {"unfenced": unfenced, "fenced": fenced}
        cluster.check_alive()
        if can_cut():
            results["partition"] = partition_rounds(cluster, hosts, args.cuts)
        else:
            results["partition"] = {"skipped": "cutting a node off needs root and iptables"}
    finally:
        cluster.cleanup()
    etcd = None
    if not args.no_etcd:
        from etcd_locks import measure_etcd_locks  # grpcio is needed only here

        etcd = measure_etcd_locks(args.seconds)
    return report(args, results, etcd)


def can_cut() -> bool:
    return os.geteuid() == 0 and shutil.which("iptables") is not None


def report(args: argparse.Namespace, results: dict[str, Any], etcd: dict | None) -> dict[str, Any]:
    writes = results["writes"]
    unfenced, fenced = statistics.median(writes["unfenced"]), statistics.median(writes["fenced"])
    figures = {
        "lock_cycles_per_s_1_client": results["cycle_1"]["ops_per_s"],
        "lock_cycle_p50_ms": results["cycle_1"]["p50_ms"],
        "lock_cycles_per_s_1_client_release_nowait": results["cycle_1_nowait"]["ops_per_s"],
        "lock_cycles_per_s_16_clients": results["cycle_16"]["ops_per_s"],
        "handovers_per_s_16_clients_one_name": results["contend_16"]["ops_per_s"],
        "unfenced_write_ops_per_s": round(unfenced),
        "fenced_write_ops_per_s": round(fenced),
        "fenced_over_unfenced": round(fenced / unfenced, 3),
        "write_rounds": writes,
        **results["partition"],
        "client_errors": sum(
            results[k]["errors"] for k in ("cycle_1", "cycle_1_nowait", "cycle_16", "contend_16")
        ),
    }
    if etcd is not None:
        figures["etcd"] = etcd
        figures["vs_etcd"] = {
            "lock_cycles_1_client": round(
                figures["lock_cycles_per_s_1_client"] / etcd["lock_cycles_per_s_1_client"], 2
            ),
            "lock_cycles_1_client_release_nowait": round(
                figures["lock_cycles_per_s_1_client_release_nowait"]
                / etcd["lock_cycles_per_s_1_client"],
                2,
            ),
            "handovers_16_clients": round(
                figures["handovers_per_s_16_clients_one_name"]
                / etcd["handovers_per_s_16_clients_one_name"],
                2,
            ),
        }
    figures["settings"] = {
        "nodes": len(NODE_IDS),
        "durable": "SQLite WAL, fsync per batch",
        "timings": "topology defaults (election 150-300 ms, link heartbeat 100 ms)",
        "seconds_per_phase": args.seconds,
        "cuts": args.cuts,
        "layouts": "cycles and handovers: 4 processes x 4 threads of Client (1 x 1 for one "
        "client); writes: 4 processes x 16 threads, each fenced writer holding a lock of its own",
        "shared_cpus": "the 3 nodes, every client process and etcd share the same CPUs",
    }
    figures["machine"] = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in args.load_at_start],
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each load phase")
    parser.add_argument("--cuts", type=int, default=10, help="rounds of cutting a follower off")
    parser.add_argument("--no-etcd", action="store_true", help="leave etcd's figures out")
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, data)")
    print_run(run, parser.parse_args(), "caddy-bench-locks-")


if __name__ == "__main__":
    main()
