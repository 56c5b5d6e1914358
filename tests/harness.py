"""Shared test helpers: free ports, topology files, node processes, polling with a deadline."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parents[1]
CADDY_NODE = REPO / "bin" / "caddy-node"
CADDY_CTL = REPO / "bin" / "caddy-ctl"
T = TypeVar("T")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel just handed out and released; distinct within one call."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def write_topology(
    folder: Path,
    node_count: int = 3,
    *,
    cluster: str = "test",
    hosts: list[str] | None = None,
    roles: list[str] | None = None,
    **sections: Any,
) -> Path:
    """A topology of `node_count` nodes on free ports under `folder`; returns the file's path."""
    hosts = hosts or ["127.0.0.1"] * node_count
    ports = free_ports(2 * node_count)
    nodes = []
    for i in range(node_count):
        node = {
            "id": f"n{i + 1}",
            "address": f"tcp://{hosts[i]}:{ports[2 * i]}",
            "client_address": f"tcp://{hosts[i]}:{ports[2 * i + 1]}",
        }
        if roles:
            node["role"] = roles[i]
        nodes.append(node)
    document = {"cluster": cluster, "data_dir": "./data", "nodes": nodes, **sections}
    path = folder / "topology.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def wait_until(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
        last = predicate()
    return last


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


@dataclass
class Processes:
    """Every process a test started; `cleanup()` kills whatever is still running."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def node(self, topology: Path, node_id: str | None = None, *extra: str) -> subprocess.Popen:
        command = [sys.executable, str(CADDY_NODE), str(topology), *extra]
        if node_id:
            command += ["--node", node_id]
        log_path = topology.parent / f"{node_id or 'supervisor'}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append(process)
        return process

    def cleanup(self) -> None:
        for process in self.started:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)


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


@dataclass
class LocalCluster:
    """Node processes of one topology, each started with `--node`, addressable by id."""

    topology: Path
    processes: Processes
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, *node_ids: str) -> None:
        for node_id in node_ids:
            self.nodes[node_id] = self.processes.node(self.topology, node_id)

    def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        process = self.nodes[node_id]
        process.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            process.wait(timeout=30)

    def stop_signal(self, node_id: str, sig: int) -> None:
        self.nodes[node_id].send_signal(sig)

    def leader(self, client: Any, timeout: float = 20) -> str:
        return wait_until(client.leader, timeout, "a leader")
