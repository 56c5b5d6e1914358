"""Reconfiguration on real `caddy-node` processes (durable, 3 nodes, defaults), under 4 plain
`Client` threads writing back to back:

- transfer-leader: `--transfers` times, the time from asking the leader (`admin.transfer` to the
  next voter in turn) to a write committed by the target (the probe offers writes to every
  node; only a leader commits one); target p50 under 100 ms;
- rolling restart: `caddy-ctl rolling-restart` with a command that SIGTERMs a node and starts it
  again; the run's duration, writes/s during it against the seconds before it, client errors
  (target 0) and the longest gap between two acknowledged writes of any client (target under
  500 ms).

Prints one JSON line. Usage: python bench/reconfig.py [--transfers N] [--keep]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/kv.py, bench/failover.py

from failover import VOTERS, Writer, summary  # noqa: E402
from kv import Cluster, FailoverProbe, caught_up, leader_status, print_run  # noqa: E402

from actors import local_cluster  # noqa: E402
from actors.local_cluster import CADDY_NODE, wait_until  # noqa: E402
from caddy.client import Client  # noqa: E402

CADDY_CTL = Path(__file__).resolve().parents[1] / "bin" / "caddy-ctl"
WRITERS = 4
BASELINE_S = 3.0  # writes measured this long before the rolling restart

RESTART_SCRIPT = """#!/bin/sh
# restart NODE: SIGTERM the node whose pid is in NODE.pid, wait until it exited, start it again
set -e
cd "$(dirname "$0")"
pid=$(cat "$1.pid")
kill -TERM "$pid"
while [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
    sleep 0.05
done
setsid {python} {caddy_node} topology.yaml --node "$1" >> "$1.log" 2>&1 < /dev/null &
echo $! > "$1.pid"
"""


def transfers(cluster: Cluster, client: Client, count: int) -> dict[str, Any]:
    probe = FailoverProbe(cluster.topology)
    samples: list[float] = []
    try:
        probe.until_committed(list(VOTERS), 5)  # its session exists before the first
        for i in range(count):
            wait_until(lambda: caught_up(client), 60, "every node to catch up")
            leader, _ = wait_until(lambda: leader_status(client), 20, "a leader")
            others = [node for node in VOTERS if node != leader]
            target = others[i % len(others)]
            asked_at = time.perf_counter()
            client.admin("admin.transfer", {"node": target})
            while probe.write_once([target]) != target:
                pass
            samples.append((time.perf_counter() - asked_at) * 1000)
    finally:
        probe.close()
    return {**summary(samples), "rounds_ms": [round(ms, 1) for ms in samples]}


def rolling_restart(cluster: Cluster, writers: list[Writer]) -> dict[str, Any]:
    folder = cluster.topology.parent
    script = folder / "restart.sh"
    script.write_text(RESTART_SCRIPT.format(python=sys.executable, caddy_node=CADDY_NODE))
    script.chmod(0o755)
    for node, process in cluster.nodes.items():
        (folder / f"{node}.pid").write_text(str(process.pid))
    acked_before = sum(len(w.acked) for w in writers)
    errors_before = sum(len(w.errors) for w in writers)
    time.sleep(BASELINE_S)
    baseline = (sum(len(w.acked) for w in writers) - acked_before) / BASELINE_S
    started = time.perf_counter()
    acked_at_start = sum(len(w.acked) for w in writers)
    command = [sys.executable, str(CADDY_CTL), "--topology", str(cluster.topology)]
    command += ["rolling-restart", "--command", f"{script} {{node}}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    ended = time.perf_counter()
    if done.returncode != 0:
        raise RuntimeError(f"rolling-restart failed: {done.stderr.strip()}")
    during = (sum(len(w.acked) for w in writers) - acked_at_start) / (ended - started)
    return {
        "seconds": round(ended - started, 2),
        "writes_per_s_during": round(during),
        "writes_per_s_before": round(baseline),
        "client_errors": sum(len(w.errors) for w in writers) - errors_before,
        "longest_write_stall_ms": round(max(w.longest_gap_ms(started, ended) for w in writers), 1),
        "steps": done.stdout.splitlines(),
    }


def kill_restarted(cluster: Cluster) -> None:
    for node in cluster.nodes:
        pid_file = cluster.topology.parent / f"{node}.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), 9)
            except ProcessLookupError:
                pass


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    topology = local_cluster.write_topology(
        folder, len(VOTERS), cluster="bench", data_dir=str(folder / "data")
    )
    cluster = Cluster(topology)
    cluster.start(*VOTERS)
    writers = [Writer(topology, f"w{i}") for i in range(WRITERS)]
    try:
        with Client(topology, timeout=10) as client:
            wait_until(lambda: leader_status(client), 20, "a leader")
            for writer in writers:
                writer.start()
            transfer = transfers(cluster, client, args.transfers)
            rolling = rolling_restart(cluster, writers)
    finally:
        for writer in writers:
            writer.stop()
        kill_restarted(cluster)
        cluster.cleanup()
    return {
        "bench": "reconfig",
        "machine": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "load_at_start": [round(x, 2) for x in args.load_at_start],
        "writers": WRITERS,
        "transfer_leader_to_commit": transfer,
        "rolling_restart_3": rolling,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transfers", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, data)")
    print_run(run, parser.parse_args(), "caddy-bench-reconfig-")


if __name__ == "__main__":
    main()
