"""Test helpers over the local cluster (`actors.local_cluster`, re-exported here): `caddy-ctl`
runs, the process tree below a supervisor, and the cluster names the cluster tests call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import zmq

from actors import local_cluster
from actors.local_cluster import CADDY_NODE, REPO, wait_until, write_topology
from actors.local_cluster import NodeProcesses as Processes
from actors.transport import link_routing_id

__all__ = [
    "CADDY_CTL",
    "CADDY_NODE",
    "LocalCluster",
    "Processes",
    "ctl_json",
    "descendants",
    "run_ctl",
    "send_each",
    "started_cluster",
    "wait_until",
    "write_topology",
]

CADDY_CTL = REPO / "bin" / "caddy-ctl"


def send_each(address: str, frames: list[bytes], peer: str | None = None) -> None:
    """Each frame on a DEALER connection of its own: a node cuts a connection after its first
    hostile frame, and what came after it on that connection may be reset unread. With `peer`,
    the connection names itself as that peer's link does."""
    for frame in frames:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 5000)  # close() must not discard what we sent
        if peer:
            sock.setsockopt(zmq.ROUTING_ID, link_routing_id(peer))
        sock.connect(address)
        sock.send(frame)
        sock.close()


def run_ctl(topology: Path, *args: str, timeout: float = 2.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(CADDY_CTL),
            "--topology",
            str(topology),
            "--timeout",
            str(timeout),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )


def ctl_json(topology: Path, *args: str, timeout: float = 2.0) -> Any:
    result = run_ctl(topology, "--json", *args, timeout=timeout)
    return json.loads(result.stdout) if result.returncode == 0 else None


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class LocalCluster(local_cluster.LocalCluster):
    """The library's local cluster plus the shorthands the cluster tests use."""

    def stop_signal(self, node_id: str, sig: int) -> None:
        self.send_signal(node_id, sig)

    def leader(self, client: Any, timeout: float = 20) -> str:
        return wait_until(client.leader, timeout, "a leader")


def started_cluster(folder: Path, processes: Processes, size: int, **settings: Any) -> LocalCluster:
    """`size` nodes n1..nN of a topology written to `folder` with `settings`, all started."""
    local = LocalCluster(write_topology(folder, size, **settings), processes)
    local.start(*(f"n{i}" for i in range(1, size + 1)))
    return local
