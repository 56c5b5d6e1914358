"""Load balancing benchmarks (one JSON line):

- `pick()` calls/s of each strategy (`caddy.balance.Balancer`) over 10 and 1,000 backends;
- a TCP proxy under load: a load generator process keeps `--connections` (64) connections
  doing small request/response exchanges (64 bytes each way) against 4 local echo backends
  (one process, asyncio) for `--seconds`, either persistent connections or a new connection
  per request, through each of: a direct connection (round robin over the backends),
  HAProxy (Debian `haproxy`, TCP mode, `balance leastconn`, `nbthread 1`; that half is skipped
  with the reason when it is not installed) and CADDY's proxy (a 1-node cluster whose service
  `listen`s, `least_connections`); requests/s, latency p50/p99, and the proxy process's CPU
  per request (utime + stime from /proc, over the run). Targets alternate, `--rounds` times.

Usage: python bench/balance.py [--rounds N] [--seconds S] [--connections C] [--keep]
The load generator is one asyncio process: on 2 cores it shares them with the proxy and the
backends, so CPU per request is the fairer figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/kv.py

from kv import print_run  # noqa: E402

from actors import local_cluster  # noqa: E402
from actors.local_cluster import free_ports, wait_until  # noqa: E402
from caddy.balance import STRATEGIES, Backend, Balancer, BalanceSettings  # noqa: E402

MESSAGE = b"x" * 64
BACKENDS = 4
HAPROXY_CONFIG = """global
    nbthread 1
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend bench
    bind 127.0.0.1:{port}
    default_backend echo
backend echo
    balance leastconn
{servers}
"""


# ----- pick() ---------------------------------------------------------------------------------


def pick_rates(picks: int) -> dict[str, dict[str, int]]:
    rates: dict[str, dict[str, int]] = {}
    for name in STRATEGIES:
        rates[name] = {}
        for size in (10, 1000):
            balancer = Balancer(name, BalanceSettings(slow_start_s=0), random.Random(1))
            balancer.update(
                [
                    Backend(f"b{i}", f"tcp://10.0.{i // 250}.{i % 250}:80", 1 + i % 3)
                    for i in range(size)
                ],
                0.0,
            )
            count = picks if size == 10 else picks // 10
            keys = [f"10.1.{i % 256}.{i // 256 % 256}" for i in range(count)]
            started = time.perf_counter()
            for key in keys:
                balancer.pick(1.0, key)
            rates[name][str(size)] = round(count / (time.perf_counter() - started))
    return rates


# ----- echo backends and the load generator (subprocesses) -------------------------------------


async def _echo_servers(ports: list[int]) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    servers = [await asyncio.start_server(echo, "127.0.0.1", port, backlog=1024) for port in ports]
    print("ready", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


async def _load(addresses: list[str], connections: int, seconds: float, mode: str) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def one_exchange(reader, writer) -> None:
        started = time.perf_counter()
        writer.write(MESSAGE)
        await writer.drain()
        await reader.readexactly(len(MESSAGE))
        latencies.append(time.perf_counter() - started)

    async def worker(index: int) -> None:
        nonlocal errors
        host, port = addresses[index % len(addresses)].rsplit(":", 1)
        if mode == "persistent":
            reader, writer = await asyncio.open_connection(host, int(port))
            while time.perf_counter() < deadline:
                await one_exchange(reader, writer)
            writer.close()
            return
        turn = index
        while time.perf_counter() < deadline:
            host, port = addresses[turn % len(addresses)].rsplit(":", 1)
            turn += connections
            try:
                started = time.perf_counter()
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(MESSAGE)
                await writer.drain()
                await reader.readexactly(len(MESSAGE))
                latencies.append(time.perf_counter() - started)
                writer.close()
            except (OSError, asyncio.IncompleteReadError):
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(connections)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "requests_per_s": round(len(ordered) / elapsed),
        "p50_us": round(ordered[len(ordered) // 2] * 1e6) if ordered else None,
        "p99_us": round(ordered[int(len(ordered) * 0.99)] * 1e6) if ordered else None,
        "errors": errors,
    }


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(target: dict[str, Any], args: argparse.Namespace, mode: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--load", json.dumps(target["addresses"])]
    command += ["--connections", str(args.connections), "--seconds", str(args.seconds)]
    command += ["--mode", mode]
    cpu_before = _cpu_s(target["pid"]) if target.get("pid") else None
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(done.stdout)
    if cpu_before is not None and result["requests"]:
        cpu = _cpu_s(target["pid"]) - cpu_before
        result["proxy_cpu_us_per_request"] = round(cpu / result["requests"] * 1e6, 1)
    return result


# ----- the three targets ------------------------------------------------------------------------


def start_haproxy(folder: Path, backend_ports: list[int]) -> tuple[dict[str, Any] | None, Any]:
    binary = shutil.which("haproxy")
    if binary is None:
        return None, "haproxy is not installed (apt-get install haproxy)"
    (port,) = free_ports(1)
    servers = "\n".join(
        f"    server b{i} 127.0.0.1:{p}" for i, p in enumerate(backend_ports)
    )
    config = folder / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, servers=servers))
    process = subprocess.Popen(
        [binary, "-f", str(config), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_until(lambda: _accepts(port), 10, "haproxy listening")
    return {"addresses": [f"127.0.0.1:{port}"], "pid": process.pid}, process


def start_caddy(folder: Path, backend_ports: list[int]) -> tuple[dict[str, Any], Any]:
    (listen,) = free_ports(1)
    services = {
        "echo": {
            "strategy": "least_connections",
            "listen": {"n1": f"tcp://127.0.0.1:{listen}"},
            "backends": [
                {"id": f"b{i}", "address": f"tcp://127.0.0.1:{p}"}
                for i, p in enumerate(backend_ports)
            ],
        }
    }
    topology = local_cluster.write_topology(
        folder, 1, cluster="bench", data_dir=str(folder / "data"), services=services
    )
    cluster = local_cluster.LocalCluster(topology)
    cluster.start("n1")
    wait_until(lambda: _accepts(listen), 30, "the CADDY proxy listening")
    return {"addresses": [f"127.0.0.1:{listen}"], "pid": cluster.nodes["n1"].pid}, cluster


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    backend_ports = free_ports(BACKENDS)
    echo = subprocess.Popen(
        [sys.executable, __file__, "--echo", json.dumps(backend_ports)],
        stdout=subprocess.PIPE,
        text=True,
    )
    echo.stdout.readline()  # "ready"
    haproxy, haproxy_handle = start_haproxy(folder, backend_ports)
    caddy, cluster = start_caddy(folder / "caddy", backend_ports)
    targets = {"direct": {"addresses": [f"127.0.0.1:{p}" for p in backend_ports]}, "caddy": caddy}
    if haproxy is not None:
        targets["haproxy"] = haproxy
    results: dict[str, dict[str, list[dict]]] = {
        name: {"persistent": [], "new": []} for name in targets
    }
    try:
        for _ in range(args.rounds):
            for mode in ("persistent", "new"):
                for name, target in targets.items():
                    results[name][mode].append(run_load(target, args, mode))
    finally:
        cluster.cleanup()
        if haproxy is not None:
            haproxy_handle.kill()
        echo.kill()
    summary = {
        name: {mode: _median(rounds) for mode, rounds in modes.items()}
        for name, modes in results.items()
    }
    ratios = {}
    if haproxy is not None:
        for mode in ("persistent", "new"):
            mine, theirs = summary["caddy"][mode], summary["haproxy"][mode]
            ratios[mode] = {
                "requests_per_s": round(mine["requests_per_s"] / theirs["requests_per_s"], 2),
                "p50": round(mine["p50_us"] / theirs["p50_us"], 2),
                "cpu_per_request": round(
                    mine["proxy_cpu_us_per_request"] / theirs["proxy_cpu_us_per_request"], 2
                ),
            }
    return {
        "bench": "balance",
        "machine": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "load_at_start": [round(x, 2) for x in args.load_at_start],
        "connections": args.connections,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "pick_per_s": pick_rates(args.picks),
        "proxy": summary,
        "caddy_over_haproxy": ratios if haproxy is not None else haproxy_handle,
        "load_generator": "1 asyncio process",
    }


def _median(rounds: list[dict]) -> dict:
    keys = [k for k in rounds[0] if isinstance(rounds[0][k], int | float)]
    return {k: statistics.median(r[k] for r in rounds if r.get(k) is not None) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--picks", type=int, default=200_000)
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, data)")
    parser.add_argument("--echo", help=argparse.SUPPRESS)  # internal: the echo backends
    parser.add_argument("--load", help=argparse.SUPPRESS)  # internal: the load generator
    parser.add_argument("--mode", default="persistent", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        asyncio.run(_echo_servers(json.loads(args.echo)))
    elif args.load:
        result = asyncio.run(
            _load(json.loads(args.load), args.connections, args.seconds, args.mode)
        )
        print(json.dumps(result))
    else:
        print_run(run, args, "caddy-bench-balance-")


if __name__ == "__main__":
    main()
