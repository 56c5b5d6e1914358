"""A local etcd cluster for benchmarks that put CADDY's figures beside etcd's on the same machine.

Members listen on 127.0.0.1 on free ports and keep etcd's defaults otherwise (fsync on), so the
figures are etcd's as shipped. Needs the `etcd` binary (Debian: etcd-server).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository

from actors.local_cluster import free_ports  # noqa: E402  (below the ephemeral range)

START_TIMEOUT_S = 30.0  # the whole cluster must answer healthy by then
POLL_S = 0.05  # how often the start-up wait asks again
HEALTH_TIMEOUT_S = 1.0  # one /health request; a member without a leader may not answer at all
EXIT_WAIT_S = 10.0  # a killed member must be gone by then


class EtcdStartError(RuntimeError):
    """A member exited, or the cluster was not healthy by the deadline; names the member's log."""


def etcd_available() -> str | None:
    """The installed etcd's version ("3.4.23"), or None without the binary, so that a benchmark
    can skip etcd rather than fail."""
    if shutil.which("etcd") is None:
        return None
    output = subprocess.run(
        ["etcd", "--version"], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"etcd Version:\s*(\S+)", output)
    return found.group(1) if found else output.strip()


@contextmanager
def etcd_cluster(folder: Path, members: int = 3) -> Iterator[list[str]]:
    """Start `members` etcd members with data and logs in `folder`, wait until every one is
    healthy, and yield their client URLs; every member is killed (and reaped) on the way out."""
    ports = free_ports(2 * members)
    client_urls = [f"http://127.0.0.1:{port}" for port in ports[:members]]
    peer_urls = [f"http://127.0.0.1:{port}" for port in ports[members:]]
    names = [f"m{i}" for i in range(members)]
    initial_cluster = ",".join(f"{name}={url}" for name, url in zip(names, peer_urls, strict=True))
    token = uuid.uuid4().hex  # members of another cluster started alongside never join this one
    folder.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name, client_url, peer_url in zip(names, client_urls, peer_urls, strict=True):
            command = member_command(name, folder, client_url, peer_url, initial_cluster, token)
            with open(folder / f"{name}.log", "wb") as log:
                processes.append(subprocess.Popen(command, stdout=log, stderr=log))
        wait_healthy(folder, names, client_urls, processes)
        yield client_urls
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait(timeout=EXIT_WAIT_S)


def member_command(
    name: str, folder: Path, client_url: str, peer_url: str, initial_cluster: str, token: str
) -> list[str]:
    return [
        "etcd",
        f"--name={name}",
        f"--data-dir={folder / name}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={initial_cluster}",
        f"--initial-cluster-token={token}",
        "--initial-cluster-state=new",
        "--logger=zap",  # 3.4's default logger is deprecated and says so at every start
    ]


def wait_healthy(
    folder: Path, names: list[str], client_urls: list[str], processes: list[subprocess.Popen]
) -> None:
    """Poll every member's /health until all say healthy (a leader and a committed read); a
    member that exits or a cluster not healthy by the deadline raises at once."""
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = dict(zip(names, client_urls, strict=True))
    while pending:
        for name, process in zip(names, processes, strict=True):
            if process.poll() is not None:
                raise EtcdStartError(f"etcd member {name} exited; see {folder / name}.log")
        pending = {name: url for name, url in pending.items() if not healthy(url)}
        if pending and time.monotonic() > deadline:
            logs = ", ".join(str(folder / f"{name}.log") for name in pending)
            raise EtcdStartError(f"etcd not healthy after {START_TIMEOUT_S:g} s; see {logs}")
        if pending:
            time.sleep(POLL_S)


def healthy(client_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{client_url}/health", timeout=HEALTH_TIMEOUT_S) as answer:
            return b'"true"' in answer.read()
    except OSError:
        return False
