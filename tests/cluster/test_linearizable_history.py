"""Concurrent clients on a few keys while a nemesis kills and pauses nodes: the recorded history
must be linearizable (checked key by key by tests/linearizability.py)."""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest

from caddy.client import Client, RequestFailed
from caddy.errors import CaddyError
from tests.harness import Processes, wait_until, write_topology
from tests.linearizability import (
    FAILED,
    UNKNOWN,
    Op,
    Operation,
    Outcome,
    Status,
    check_history,
    ok,
)

NODE_IDS = ("n1", "n2", "n3")
KEYS = ("x", "y", "z")
WORKERS = 4
RUN_S = 16.0
CLIENT_TIMEOUT_S = 2.0


@dataclass
class Cluster:
    """Three node processes that the nemesis may kill, restart, pause and resume."""

    topology: Path
    processes: Processes
    running: dict[str, Popen] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)

    def start(self, node_id: str) -> None:
        self.running[node_id] = self.processes.node(self.topology, node_id)

    def signal(self, node_id: str, signum: signal.Signals) -> None:
        os.killpg(self.running[node_id].pid, signum)

    def kill(self, node_id: str) -> None:
        self.signal(node_id, signal.SIGKILL)
        self.running.pop(node_id).wait(timeout=10)

    def pause(self, node_id: str) -> None:
        self.signal(node_id, signal.SIGSTOP)
        self.paused.add(node_id)

    def resume(self, node_id: str) -> None:
        self.signal(node_id, signal.SIGCONT)
        self.paused.discard(node_id)

    def heal(self) -> None:
        for node_id in list(self.paused):
            self.resume(node_id)
        for node_id in NODE_IDS:
            if node_id not in self.running:
                self.start(node_id)


@dataclass
class Faults:
    """What the nemesis did, for the assertions and the failure message."""

    kills: int = 0
    pauses: int = 0
    log: list[str] = field(default_factory=list)


@pytest.fixture
def cluster(tmp_path, processes):
    nodes = Cluster(write_topology(tmp_path, 3), processes)
    for node_id in NODE_IDS:
        nodes.start(node_id)
    with Client(nodes.topology, timeout=1) as client:
        wait_until(client.leader, 20, "a leader")
    return nodes


def serves(client: Client, node_id: str) -> bool:
    """The node answers and follows a leader (or is one)."""
    status = client.statuses().get(node_id)
    return bool(status and status.get("leader"))


def nemesis(cluster: Cluster, stop: threading.Event, faults: Faults, rng: random.Random) -> None:
    """Alternate kill -9 (and restart) with SIGSTOP (and SIGCONT), the leader half the time;
    at most one node is down at any moment."""
    with Client(cluster.topology, timeout=0.5) as client:
        try:
            for round_number in itertools.count():
                if stop.wait(rng.uniform(0.5, 1.5)):
                    return
                leader = client.leader()
                target = leader if leader and rng.random() < 0.5 else rng.choice(NODE_IDS)
                started = time.monotonic()
                if round_number % 2 == 0:
                    cluster.kill(target)
                    faults.kills += 1
                    stop.wait(rng.uniform(0.2, 1.5))
                    cluster.start(target)
                else:
                    cluster.pause(target)
                    faults.pauses += 1
                    stop.wait(rng.uniform(0.1, 1.5))
                    cluster.resume(target)
                faults.log.append(
                    f"{'kill' if round_number % 2 == 0 else 'pause'} {target}"
                    f"{' (leader)' if target == leader else ''}"
                    f" for {time.monotonic() - started:.2f} s"
                )
                wait_until(partial(serves, client, target), 20, f"{target} to rejoin")
        finally:
            cluster.heal()


def worker(topology: Path, process: int, stop: threading.Event, seed: int) -> list[Operation]:
    """Random reads, writes, cas and deletes of unique values; a timeout is an unknown outcome."""
    rng = random.Random(seed)
    history: list[Operation] = []
    last_seen: dict[str, Any] = {}  # what this client last saw under each key: cas expects it
    with Client(topology, timeout=CLIENT_TIMEOUT_S) as client:
        for number in itertools.count():
            if stop.is_set():
                return history
            key = rng.choice(KEYS)
            kind = rng.choices(list(Op), weights=(4, 3, 3, 1))[0]
            value = f"p{process}-{number}"
            args: tuple[Any, ...] = {
                Op.WRITE: (value,),
                Op.CAS: (last_seen.get(key) if rng.random() < 0.8 else None, value),
            }.get(kind, ())
            call = time.monotonic()
            outcome: Outcome
            try:
                outcome = ok(perform(client, kind, key, args))
            except RequestFailed:
                outcome = FAILED
            except CaddyError:
                outcome = UNKNOWN
            history.append(Operation(process, kind, key, args, call, time.monotonic(), outcome))
            last_seen[key] = _seen_after(kind, args, outcome, last_seen.get(key))
    return history


def perform(client: Client, kind: Op, key: str, args: tuple[Any, ...]) -> Any:
    if kind is Op.READ:
        return client.get(key)
    if kind is Op.WRITE:
        return client.put(key, *args)
    if kind is Op.CAS:
        return client.cas(key, *args)
    return client.delete(key)


def _seen_after(kind: Op, args: tuple[Any, ...], outcome: Outcome, before: Any) -> Any:
    if outcome.status is not Status.OK:
        return before
    if kind is Op.READ:
        return outcome.value
    if kind is Op.WRITE or (kind is Op.CAS and outcome.value):
        return args[-1]
    return None if kind is Op.DELETE else before


def final_reads(topology: Path) -> list[Operation]:
    """After healing, one read per key: every acknowledged write must still be accounted for."""
    reads = []
    with Client(topology, timeout=10) as client:
        for key in KEYS:
            call = time.monotonic()
            value = client.get(key)
            reads.append(Operation("final", Op.READ, key, (), call, time.monotonic(), ok(value)))
    return reads


def test_history_under_kills_and_pauses_is_linearizable(cluster):
    seed = random.randrange(1 << 32)
    stop = threading.Event()
    faults = Faults()
    with ThreadPoolExecutor(WORKERS + 1) as pool:
        workers = [
            pool.submit(worker, cluster.topology, process, stop, seed + process)
            for process in range(WORKERS)
        ]
        chaos = pool.submit(nemesis, cluster, stop, faults, random.Random(seed))
        stop.wait(RUN_S)
        stop.set()
        chaos.result()
        history = [operation for future in workers for operation in future.result()]
    history += final_reads(cluster.topology)

    by_status = {s.value: sum(o.outcome.status is s for o in history) for s in Status}
    summary = f"seed {seed}, {len(history)} operations {by_status}, faults {faults.log}"
    verdict = check_history(history)
    assert verdict, f"{summary}\n{verdict}"
    assert by_status["ok"] >= 300, summary
    assert faults.kills >= 1 and faults.pauses >= 1, summary
