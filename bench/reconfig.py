"""Reconfiguration on real `caddy-node` processes (durable, defaults), under 4 plain `Client`
threads writing back to back:

- transfer-leader (3 nodes): `--transfers` times, the time from asking the leader
  (`admin.transfer` to the next voter in turn) to a write committed by the target (the probe
  offers writes to every node; only a leader commits one); target p50 under 100 ms;
- rolling restart of 3 nodes, then of 5: `caddy-ctl rolling-restart` with a command that
  SIGTERMs a node and starts it again; the run's duration, writes/s during it against the
  seconds before it, client errors (target 0) and the longest gap between two acknowledged
  writes of any client (target under 500 ms);
- add a node (3 nodes holding `--keys` keys of 100 bytes, written first with 64 in flight,
  `raft.snapshot_threshold` 1000 so that the leader holds a recent snapshot): a fourth node
  started with `caddy-node --join`, the time until the leader counts it a voter (its health
  verdict takes `failure_threshold` checks of `health_check_interval_ms`, 3 s by default,
  before the leader promotes it), the time from its first log line until it installed the
  leader's snapshot (the join request and the transfer), the snapshot's size and MB/s.

Prints one JSON line. Usage: python bench/reconfig.py [--transfers N] [--keys N] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/kv.py, bench/failover.py

from failover import VOTERS, Writer, summary  # noqa: E402
from kv import Cluster, FailoverProbe, caught_up, leader_status, print_run  # noqa: E402

from actors import local_cluster  # noqa: E402
from actors.local_cluster import CADDY_NODE, wait_until  # noqa: E402
from caddy.async_client import AsyncClient  # noqa: E402
from caddy.client import Client  # noqa: E402

CADDY_CTL = Path(__file__).resolve().parents[1] / "bin" / "caddy-ctl"
WRITERS = 4
BASELINE_S = 3.0  # writes measured this long before the rolling restart
LOAD_IN_FLIGHT = 64
VALUE = "v" * 100
INSTALLED = re.compile(r"installed the leader's snapshot at index \d+ \((\d+) bytes\)")

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


def under_writes(folder: Path, nodes: int, work) -> Any:
    """`work(cluster, client, writers)` on `nodes` fresh nodes while WRITERS write."""
    topology = local_cluster.write_topology(
        folder, nodes, cluster="bench", data_dir=str(folder / "data")
    )
    cluster = Cluster(topology)
    cluster.start(*(f"n{i}" for i in range(1, nodes + 1)))
    writers = [Writer(topology, f"w{i}") for i in range(WRITERS)]
    try:
        with Client(topology, timeout=10) as client:
            wait_until(partial(_judged_healthy, client), 30, "every member judged healthy")
            for writer in writers:
                writer.start()
            return work(cluster, client, writers)
    finally:
        for writer in writers:
            writer.stop()
        kill_restarted(cluster)
        cluster.cleanup()


def transfers_and_rolling_restart(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    def work(cluster: Cluster, client: Client, writers: list[Writer]) -> dict[str, Any]:
        return {
            "transfer_leader_to_commit": transfers(cluster, client, args.transfers),
            "rolling_restart_3": rolling_restart(cluster, writers),
        }

    return under_writes(folder, 3, work)


def add_node(folder: Path, keys: int) -> dict[str, Any]:
    """3 nodes take `keys` keys, then n4 (in a file the running nodes do not read) joins."""
    every = local_cluster.write_topology(  # snapshots often: 100k writes are ~4k entries
        folder,
        4,
        cluster="bench",
        data_dir=str(folder / "data"),
        raft={"snapshot_threshold": 1000},
    )
    three = folder / "three.yaml"
    document = yaml.safe_load(every.read_text())
    document["nodes"] = [node for node in document["nodes"] if node["id"] != "n4"]
    three.write_text(yaml.safe_dump(document, sort_keys=False))
    cluster = Cluster(three)
    cluster.start("n1", "n2", "n3")
    try:
        with Client(every, timeout=10) as client:
            wait_until(lambda: leader_status(client), 20, "a leader")
            load_started = time.perf_counter()
            asyncio.run(_load(three, keys))
            load_s = time.perf_counter() - load_started
            started = time.perf_counter()
            cluster.processes.node(every, "n4", "--join")
            wait_until(partial(_votes, client, "n4"), 300, "n4 a voter", every=0.01)
            promoted_s = time.perf_counter() - started
            log = (folder / "n4.log").read_text()
            installed = INSTALLED.search(log)
            if installed is None:
                raise RuntimeError("n4 caught up without a snapshot: raise --keys")
            installed_at = _log_time(log, installed.start())
            snapshot_bytes = int(installed.group(1))
            started_at = _log_time(log, 0)
            transfer_s = installed_at - started_at
    finally:
        cluster.cleanup()
    return {
        "keys": keys,
        "load_writes_per_s": round(keys / load_s),
        "join_to_voter_s": round(promoted_s, 2),
        "snapshot_bytes": snapshot_bytes,
        "start_to_snapshot_installed_s": round(transfer_s, 2),
        "snapshot_mb_per_s": round(snapshot_bytes / 1e6 / transfer_s, 1),
    }


def _judged_healthy(client: Client) -> bool:
    """The leader judges every member healthy: it moves leadership only to such a voter."""
    found = leader_status(client)
    return found is not None and set(found[1]["failover"]["health"].values()) == {"healthy"}


def _votes(client: Client, node: str) -> bool:
    found = leader_status(client)
    return found is not None and node in found[1]["membership"]["voters"]


async def _load(topology: Path, keys: int) -> None:
    async with AsyncClient(topology, timeout=30) as client:
        next_key = iter(range(keys))

        async def writer() -> None:
            for key in next_key:
                await client.put(f"key-{key:06d}", VALUE)

        await asyncio.gather(*(writer() for _ in range(LOAD_IN_FLIGHT)))


def _log_time(log: str, position: int) -> float:
    """The timestamp of the log line at `position` (`2026-12-04 19:00:00,123 ...`)."""
    line_start = log.rfind("\n", 0, position) + 1
    stamp = log[line_start : line_start + 23]
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:]) / 1000


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    three = transfers_and_rolling_restart(args, folder / "three")
    five = under_writes(
        folder / "five", 5, lambda cluster, _, writers: rolling_restart(cluster, writers)
    )
    joined = add_node(folder / "add", args.keys)
    return {
        "bench": "reconfig",
        "machine": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "load_at_start": [round(x, 2) for x in args.load_at_start],
        "writers": WRITERS,
        **three,
        "rolling_restart_5": five,
        "add_node": joined,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transfers", type=int, default=20)
    parser.add_argument("--keys", type=int, default=100_000, help="keys before the node joins")
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, data)")
    print_run(run, parser.parse_args(), "caddy-bench-reconfig-")


if __name__ == "__main__":
    main()
