"""Automatic failover end to end, on real `caddy-node` processes with the topology's failover
defaults (checks every 1 s, failed after 3 misses) unless said otherwise. Over `--trials`
trials each:

- health: a 3-voter cluster whose nodes run `test -f FLAG` as their health check; the leader's
  flag is removed; time until a write commits on another node (the probe offers writes to
  every node; only a leader commits one). The bound CONTRACT 6 sets is failure_threshold x
  health_check_interval_ms + 1 s = 4 s.
- promotion: a fresh cluster of 3 voters and a learner (stabilization `--stabilization-ms`);
  a follower voter is killed -9; time until the leader reports the learner a voter, minus the
  stabilization time, and until the dead voter is removed (which waits min_action_interval_ms
  more).
- sigterm: 3 voters under 4 plain `Client` threads writing back to back; the leader gets
  SIGTERM; time until a write commits on a new leader, client-visible errors (target 0), the
  longest gap between two acknowledged writes of any client (target < 500 ms), and the time
  the stopped node took to exit.

For reference: Patroni's defaults fail over in ~30-45 s; Consul Autopilot waits 10 s of
stabilization. Prints one JSON line.
Usage: python bench/failover.py [--trials N] [--stabilization-ms MS] [--keep]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/kv.py

from kv import BenchError, Cluster, FailoverProbe, caught_up, leader_status, print_run  # noqa: E402

from actors import local_cluster  # noqa: E402
from actors.local_cluster import wait_until  # noqa: E402
from caddy.client import Client  # noqa: E402
from caddy.errors import CaddyError  # noqa: E402

VOTERS = ("n1", "n2", "n3")
WRITERS = 4


def summary(samples_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(samples_ms), 1),
        "max_ms": round(max(samples_ms), 1),
        "min_ms": round(min(samples_ms), 1),
    }


def all_healthy(client: Client, node: str) -> bool:
    return set(client.status(node)["failover"]["health"].values()) == {"healthy"}


def is_voter(client: Client, asked: str, node: str) -> bool:
    return node in client.status(asked)["quorum"]["voters"]


def start(folder: Path, roles: list[str] | None = None, **failover: Any) -> Cluster:
    topology = local_cluster.write_topology(
        folder,
        len(roles or VOTERS),
        cluster="bench",
        roles=roles,
        data_dir=str(folder / "data"),
        failover=failover,
    )
    cluster = Cluster(topology)
    cluster.start(*(f"n{i}" for i in range(1, len(roles or VOTERS) + 1)))
    return cluster


def health_trials(folder: Path, trials: int) -> dict[str, Any]:
    flags = folder / "flags"
    flags.mkdir(parents=True)
    for node in VOTERS:
        (flags / f"{node}.ok").touch()
    cluster = start(folder / "health", health_checks=[{"command": f"test -f {flags}/{{node}}.ok"}])
    probe = FailoverProbe(cluster.topology)
    samples: list[float] = []
    try:
        with Client(cluster.topology, timeout=10) as client:
            for _ in range(trials):
                wait_until(lambda: caught_up(client), 60, "every node to catch up")
                leader, _ = wait_until(lambda: leader_status(client), 20, "a leader")
                wait_until(partial(all_healthy, client, leader), 30, "every member healthy")
                probe.until_committed(list(VOTERS), 5)  # its session exists before the trial
                others = [node for node in VOTERS if node != leader]
                removed_at = time.perf_counter()
                (flags / f"{leader}.ok").unlink()
                probe.until_committed(others, 30)
                samples.append((time.perf_counter() - removed_at) * 1000)
                (flags / f"{leader}.ok").touch()
    finally:
        probe.close()
        cluster.cleanup()
    return {**summary(samples), "rounds_ms": [round(ms) for ms in samples]}


def promotion_trials(folder: Path, trials: int, stabilization_ms: int) -> dict[str, Any]:
    promoted: list[float] = []
    removed: list[float] = []
    for trial in range(trials):
        cluster = start(
            folder / f"promotion-{trial}",
            roles=["voter", "voter", "voter", "learner"],
            stabilization_ms=stabilization_ms,
        )
        try:
            with Client(cluster.topology, timeout=10) as client:
                leader, _ = wait_until(lambda: leader_status(client), 20, "a leader")
                client.put("before", 1)
                wait_until(lambda: caught_up(client), 60, "every node to catch up")
                victim = next(node for node in VOTERS if node != leader)
                killed_at = time.perf_counter()
                cluster.kill(victim)
                wait_until(partial(is_voter, client, leader, "n4"), 60, "n4 promoted")
                promoted.append((time.perf_counter() - killed_at) * 1000 - stabilization_ms)
                gone = partial(is_voter, client, leader, victim)
                wait_until(lambda: not gone(), 60, f"{victim} removed")  # noqa: B023
                removed.append((time.perf_counter() - killed_at) * 1000 - stabilization_ms)
        finally:
            cluster.cleanup()
    return {
        "stabilization_ms": stabilization_ms,
        "promoted_after_stabilization": summary(promoted),
        "removed_after_stabilization": summary(removed),
    }


class Writer(threading.Thread):
    """A plain Client writing back to back; every error it raises is one a user would see."""

    def __init__(self, topology: Path, name: str) -> None:
        super().__init__(daemon=True)
        self.client = Client(topology)
        self.name = name
        self.acked: list[float] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            i += 1
            try:
                self.client.put(f"{self.name}-{i}", i)
            except CaddyError as error:
                self.errors.append(repr(error))
                continue
            self.acked.append(time.perf_counter())

    def longest_gap_ms(self, since: float, until: float) -> float:
        moments = [since, *(t for t in self.acked if since <= t <= until), until]
        return max(b - a for a, b in zip(moments, moments[1:], strict=False)) * 1000

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        self.client.close()


def sigterm_trials(folder: Path, trials: int) -> dict[str, Any]:
    cluster = start(folder / "sigterm")
    probe = FailoverProbe(cluster.topology)
    writers = [Writer(cluster.topology, f"w{i}") for i in range(WRITERS)]
    commits: list[float] = []
    exits: list[float] = []
    gaps: list[float] = []
    try:
        for writer in writers:
            writer.start()
        with Client(cluster.topology, timeout=10) as client:
            for _ in range(trials):
                wait_until(lambda: caught_up(client), 60, "every node to catch up")
                leader, _ = wait_until(lambda: leader_status(client), 20, "a leader")
                probe.until_committed(list(VOTERS), 5)  # its session exists before the trial
                time.sleep(0.3)  # writes flow before the signal
                others = [node for node in VOTERS if node != leader]
                signalled_at = time.perf_counter()
                cluster.send_signal(leader, signal.SIGTERM)
                new_leader = probe.until_committed(others, 30)
                commits.append((time.perf_counter() - signalled_at) * 1000)
                cluster.nodes[leader].wait(60)
                exited_at = time.perf_counter()
                exits.append((exited_at - signalled_at) * 1000)
                if new_leader == leader:
                    raise BenchError("the stopping leader committed a write")
                time.sleep(0.5)  # the writers settle on the new leader
                settle = time.perf_counter()
                gaps.append(max(w.longest_gap_ms(signalled_at, settle) for w in writers))
                cluster.start(leader)
    finally:
        for writer in writers:
            writer.stop()
        probe.close()
        cluster.cleanup()
    errors = [error for writer in writers for error in writer.errors]
    return {
        "new_leader_commit": summary(commits),
        "node_exit": summary(exits),
        "longest_write_stall": summary(gaps),
        "client_errors": len(errors),
        "client_error_samples": errors[:5],
        "writes_acknowledged": sum(len(writer.acked) for writer in writers),
    }


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    return {
        "bench": "failover",
        "machine": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "load_at_start": [round(x, 2) for x in args.load_at_start],
        "trials": args.trials,
        "health_check_to_new_leader_commit": health_trials(folder, args.trials),
        "voter_kill_to_learner_promoted": promotion_trials(
            folder, args.trials, args.stabilization_ms
        ),
        "sigterm_of_leader": sigterm_trials(folder, args.trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--stabilization-ms", type=int, default=2000)
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, data)")
    print_run(run, parser.parse_args(), "caddy-bench-failover-")


if __name__ == "__main__":
    main()
