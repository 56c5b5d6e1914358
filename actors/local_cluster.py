"""A local multi-process cluster for tests and benchmarks: free ports, topology files, and
`caddy-node` processes started, signalled, restarted and cleaned up, with deadline polling."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import yaml

from caddy.config import ClusterConfig, load_topology
from caddy.errors import CaddyError

REPO = Path(__file__).resolve().parents[1]
CADDY_NODE = REPO / "bin" / "caddy-node"
LOG_TAIL_CHARS = 2000  # how much of a dead node's log an error quotes
EXIT_WAIT_S = 30.0  # a killed or terminated node must be gone by then
T = TypeVar("T")


class WaitTimeout(CaddyError):
    """`wait_until` reached its deadline before the awaited condition held."""


class NodeExited(CaddyError):
    """A node process that should be running has exited; the message quotes its log's tail."""


@contextmanager
def scratch_folder(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A fresh temporary folder for a cluster's topology, logs and data; removed on the way out
    unless `keep` (to read the logs after a failed run)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


# Ports are taken from below the kernel's ephemeral range when it leaves room: a port the kernel
# hands out for bind(0) may be handed out again before the node meant to bind it starts, as the
# source port of another node's outgoing connection (ZeroMQ binds SRC:0 for those), and that node
# then cannot start.
LOWEST_PORT = 10_000
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free on `host` now, distinct within one call, from outside the ephemeral range
    where possible (see LOWEST_PORT), picked at random so that test runs can overlap."""
    candidates = _ports_below_ephemeral_range()
    random.Random().shuffle(candidates)  # fresh entropy even where a test seeded `random`
    sockets: list[socket.socket] = []
    try:
        for port in candidates:
            if len(sockets) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((host, port))
            except OSError:  # taken
                sock.close()
                continue
            sockets.append(sock)
        while len(sockets) < count:  # no room below the ephemeral range: let the kernel pick
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        # All stay bound until every port is known, so none is picked twice.
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _ports_below_ephemeral_range() -> list[int]:
    try:
        low = int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    return list(range(LOWEST_PORT, low))


def write_topology(
    folder: Path,
    node_count: int = 3,
    *,
    cluster: str = "test",
    hosts: list[str] | None = None,
    roles: list[str] | None = None,
    data_dir: str = "./data",
    **sections: Any,
) -> Path:
    """Write `folder`/topology.yaml: nodes n1..nN on free ports; returns the file's path.

    `hosts` and `roles` give each node's host and role (default 127.0.0.1, voter); any further
    keyword becomes a top-level section of the file (`raft={...}`, `gossip={...}`).
    """
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
    document = {"cluster": cluster, "data_dir": data_dir, "nodes": nodes, **sections}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "topology.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def wait_until(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy, and return that; WaitTimeout naming
    `what` at the deadline. Waiting on a condition, never for a fixed time, keeps runs fast."""
    deadline = time.monotonic() + timeout
    last = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
        last = predicate()
    return last


def process_memory_kb(pid: int, field_name: str = "VmRSS") -> int:
    """A `kB` field of /proc/PID/status (VmRSS now, VmHWM the peak); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class NodeProcesses:
    """Every `caddy-node` process started through it; `cleanup()` kills each one still running."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def node(self, topology: Path, node_id: str | None = None, *extra: str) -> subprocess.Popen:
        """Start one node (or, without `node_id`, the supervisor of all), logging to
        `<node_id or supervisor>.log` beside the topology.

        Each process gets its own session, so Ctrl-C reaches only the caller, whose cleanup then
        kills the nodes, and `cleanup()` can kill a supervisor together with its children.
        """
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
        """SIGKILL the process group of every started process still running, and reap it."""
        for process in self.started:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)


@dataclass
class LocalCluster:
    """The node processes of one topology, each started with `--node`, addressable by id."""

    topology: Path
    processes: NodeProcesses = field(default_factory=NodeProcesses)
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @cached_property
    def config(self) -> ClusterConfig:
        """The topology as the nodes read it."""
        return load_topology(self.topology)

    def start(self, *node_ids: str) -> None:
        for node_id in node_ids:
            self.nodes[node_id] = self.processes.node(self.topology, node_id)

    def send_signal(self, node_id: str, sig: int) -> None:
        """Signal the node's process without waiting for any effect."""
        self.nodes[node_id].send_signal(sig)

    def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        """Stop the node with `sig` (kill -9 by default; SIGTERM stops it gracefully); reap it."""
        self.send_signal(node_id, sig)
        self.nodes[node_id].wait(timeout=EXIT_WAIT_S)

    def restart(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        """Stop the node with `sig`, then start it again on the same data."""
        self.kill(node_id, sig)
        self.start(node_id)

    def pause(self, node_id: str) -> None:
        """SIGSTOP: the node stays alive but silent, like a long GC pause or a stalled VM."""
        self.send_signal(node_id, signal.SIGSTOP)

    def resume(self, node_id: str) -> None:
        self.send_signal(node_id, signal.SIGCONT)

    def log_path(self, node_id: str) -> Path:
        return self.topology.parent / f"{node_id}.log"

    def check_alive(self) -> None:
        """NodeExited, quoting the node's log, if any started node has exited."""
        for node_id, process in self.nodes.items():
            if process.poll() is not None:
                tail = self.log_path(node_id).read_text(errors="replace")[-LOG_TAIL_CHARS:]
                raise NodeExited(f"node {node_id} exited ({process.returncode}):\n{tail}")

    def memory_kb(self, field_name: str = "VmRSS") -> dict[str, int]:
        """`process_memory_kb` of each node's current process, by node id."""
        return {
            node_id: process_memory_kb(process.pid, field_name)
            for node_id, process in self.nodes.items()
        }

    def cleanup(self) -> None:
        """Kill every process this cluster ever started (restarted ones included)."""
        self.processes.cleanup()


class Firewall:
    """iptables DROP rules between the per-node 127.x.y.z addresses of a local cluster (root
    only): `cut(a, b)` drops both directions, `heal()` removes every rule this firewall added
    (they are tagged with a comment of their own)."""

    def __init__(self):
        self.tag = f"caddy-test-{os.getpid()}-{random.randrange(1 << 30)}"
        self.rules: list[list[str]] = []

    def cut(self, a: str, b: str) -> None:
        for source, destination in ((a, b), (b, a)):
            rule = [
                "INPUT",
                "-s",
                source,
                "-d",
                destination,
                "-j",
                "DROP",
                "-m",
                "comment",
                "--comment",
                self.tag,
            ]
            subprocess.run(["iptables", "-I", *rule], check=True)
            self.rules.append(rule)

    def heal(self) -> None:
        while self.rules:
            subprocess.run(["iptables", "-D", *self.rules.pop()], check=True)
