"""Concurrent clients on a few keys while a nemesis kills and pauses nodes, and in a second run
also changes the membership (promotes, demotes, moves leadership): the recorded history must be
linearizable (checked key by key by tests/linearizability.py)."""

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
from tests.cluster.failover_helpers import FAST_CHECKS
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

KEYS = ("x", "y", "z")
WORKERS = 4
RUN_S = 16.0
CLIENT_TIMEOUT_S = 2.0


@dataclass
class Cluster:
    """Node processes that the nemesis may kill, restart, pause and resume."""

    topology: Path
    processes: Processes
    node_ids: tuple[str, ...]
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
        for node_id in self.node_ids:
            if node_id not in self.running:
                self.start(node_id)


@dataclass
class Faults:
    """What the nemesis did, for the assertions and the failure message."""

    kills: int = 0
    pauses: int = 0
    changes: int = 0
    log: list[str] = field(default_factory=list)


def started(tmp_path: Path, processes: Processes, roles: list[str], **settings: Any) -> Cluster:
    node_ids = tuple(f"n{i}" for i in range(1, len(roles) + 1))
    topology = write_topology(tmp_path, len(roles), roles=roles, **settings)
    nodes = Cluster(topology, processes, node_ids)
    for node_id in node_ids:
        nodes.start(node_id)
    with Client(nodes.topology, timeout=1) as client:
        wait_until(client.leader, 20, "a leader")
    return nodes


@pytest.fixture
def cluster(tmp_path, processes):
    return started(tmp_path, processes, ["voter"] * 3)


def serves(client: Client, node_id: str) -> bool:
    """The node answers and follows a leader (or is one)."""
    status = client.statuses().get(node_id)
    return bool(status and status.get("leader"))


def nemesis(
    cluster: Cluster,
    stop: threading.Event,
    faults: Faults,
    rng: random.Random,
    membership: bool = False,
) -> None:
    """Alternate kill -9 (and restart) with SIGSTOP (and SIGCONT), the leader half the time;
    at most one node is down at any moment. With `membership`, every third round changes the
    membership instead, as an operator would (`change_membership`)."""
    with Client(cluster.topology, timeout=0.5) as client:
        try:
            for round_number in itertools.count():
                if stop.wait(rng.uniform(0.5, 1.5)):
                    return
                if membership and round_number % 3 == 2:
                    change_membership(client, rng, faults)
                    continue
                leader = client.leader()
                target = leader if leader and rng.random() < 0.5 else rng.choice(cluster.node_ids)
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


def change_membership(client: Client, rng: random.Random, faults: Faults) -> None:
    """Promote a learner, else demote a voter that does not lead (while 4 vote), else move
    leadership: each asked of the leader as caddy-ctl asks, its rules deciding."""
    try:
        leader = client.leader()
        members = client.status(leader)["membership"]
        if members["learners"]:
            request = (
                "admin.change",
                {"change": "promote", "node": rng.choice(members["learners"])},
            )
        elif len(members["voters"]) > 3:
            followers = [node for node in members["voters"] if node != leader]
            request = ("admin.change", {"change": "demote", "node": rng.choice(followers)})
        else:
            request = ("admin.transfer", {"node": None})
        client.admin(*request)
        faults.changes += 1
        faults.log.append(f"{request[0]} {request[1]}")
    except CaddyError as error:  # refused (a learner behind, a change in flight) or no leader
        faults.log.append(f"membership change not made: {error}")


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
    faults = run_and_check(cluster)
    assert faults.kills >= 1 and faults.pauses >= 1, faults.log


def test_history_under_kills_pauses_and_membership_changes_is_linearizable(tmp_path, processes):
    """n4 starts a learner: promoted, a voter demoted, promoted again... among the faults."""
    roles = ["voter", "voter", "voter", "learner"]
    # health judged every 200 ms: a new leader knows within a second whom it may promote
    cluster = started(tmp_path, processes, roles, failover=FAST_CHECKS)
    faults = run_and_check(cluster, membership=True)
    assert faults.kills >= 1 and faults.pauses >= 1 and faults.changes >= 2, faults.log


def run_and_check(cluster: Cluster, membership: bool = False) -> Faults:
    """Workers and the nemesis for RUN_S, then the history checked; what the nemesis did."""
    seed = random.randrange(1 << 32)
    stop = threading.Event()
    faults = Faults()
    with ThreadPoolExecutor(WORKERS + 1) as pool:
        workers = [
            pool.submit(worker, cluster.topology, process, stop, seed + process)
            for process in range(WORKERS)
        ]
        chaos = pool.submit(nemesis, cluster, stop, faults, random.Random(seed), membership)
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
    return faults
