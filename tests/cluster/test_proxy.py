"""The TCP proxy on real nodes (CONTRACT 7): every node proxies a service's connections to its
backends (small echo servers the test runs), in the weights' shares; `ip_hash` sends one client
address to one backend through any of the 3 proxies; a backend that stops listening costs no
client connection (its refusal is retried once on another backend)."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections import Counter

from actors.local_cluster import free_ports
from caddy.client import Client
from tests.harness import run_ctl, started_cluster, wait_until


class EchoBackend:
    """Answers each connection with `ID:` and what it received, once the client half-closed."""

    def __init__(self, backend_id: str, port: int) -> None:
        prefix = f"{backend_id}:".encode()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                received = b""
                while chunk := self.request.recv(65536):
                    received += chunk
                self.request.sendall(prefix + received)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            request_queue_size = 128  # the default 5 refuses bursts from three proxies

        self.server = Server(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.address = f"tcp://127.0.0.1:{port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def exchange(address: str, payload: bytes = b"hello") -> bytes:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(payload)
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_every_node_proxies_in_the_weights_shares_and_survives_a_dead_backend(tmp_path, processes):
    ports = free_ports(10)
    echoes = [EchoBackend(f"b{i + 1}", port) for i, port in enumerate(ports[:4])]
    try:
        backends = [
            {"id": f"b{i + 1}", "address": echo.address, "weight": weight}
            for i, (echo, weight) in enumerate(zip(echoes, (2, 1, 1, 1), strict=True))
        ]
        weighted_listen = {f"n{i}": f"tcp://127.0.0.1:{ports[3 + i]}" for i in (1, 2, 3)}
        sticky_listen = {f"n{i}": f"tcp://127.0.0.1:{ports[6 + i]}" for i in (1, 2, 3)}
        # checks too rare to see b1 die during the test: the proxy's own retries must do
        health = {"interval_ms": 30_000, "failure_threshold": 2}
        services = {
            "api": {
                "strategy": "weighted",
                "listen": weighted_listen,
                "health": health,
                "backends": backends,
                "slow_start_ms": 0,
            },
            "sticky": {
                "strategy": "ip_hash",
                "listen": sticky_listen,
                "health": health,
                "backends": backends,
            },
        }
        cluster = started_cluster(tmp_path, processes, 3, services=services)
        with Client(cluster.topology, timeout=10) as client:
            cluster.leader(client)
            for address in [*weighted_listen.values(), *sticky_listen.values()]:
                wait_until(lambda a=address: _answers(a), 20, f"the proxy on {address}")

            before = shown_totals(cluster.topology)  # the warm-up connections above
            counts = Counter()
            for address in weighted_listen.values():  # 250 connections through each node
                for _ in range(250):
                    answer = exchange(address)
                    assert answer.endswith(b":hello"), answer
                    counts[answer.split(b":")[0].decode()] += 1
            assert sum(counts.values()) == 750
            for backend, weight in (("b1", 2), ("b2", 1), ("b3", 1), ("b4", 1)):
                assert abs(counts[backend] / 750 - weight / 5) <= 0.02, counts

            # what caddy-ctl shows is what the clients saw
            assert shown_totals(cluster.topology) - before == counts

            sticky = {exchange(address).split(b":")[0] for address in sticky_listen.values()}
            assert len(sticky) == 1  # one client address, one backend, whichever node

            echoes[0].close()  # b1 stops listening: nothing told the balancers yet
            for address in weighted_listen.values():
                for _ in range(20):
                    answer = exchange(address)
                    assert answer.endswith(b":hello") and not answer.startswith(b"b1:"), answer
            # refused connections were counted against b1 (the section is posted each 100 ms)
            wait_until(lambda: _failures(client, "b1") >= 1, 5, "b1's refusals counted")
    finally:
        for echo in echoes[1:]:
            echo.close()


def _failures(client: Client, backend: str) -> int:
    return sum(
        row["failures"]
        for status in client.statuses().values()
        for row in status["balancer"]["api"]["backends"]
        if row["id"] == backend
    )


def shown_totals(topology) -> Counter:
    """Connections per backend, summed over the nodes, as `caddy-ctl backends --json` shows
    them; none may still be open."""
    shown = run_ctl(topology, "--json", "backends", "api", timeout=30)
    totals: Counter = Counter()
    for row in json.loads(shown.stdout)["backends"]:
        totals[row["id"]] += row["total"]
        assert row["active"] == 0, row
    return totals


def _answers(address: str) -> bool:
    try:
        return exchange(address).endswith(b":hello")
    except OSError:
        return False


def test_a_drained_backend_takes_no_new_connection_and_its_open_ones_end_at_the_timeout(
    tmp_path, processes
):
    """ip_hash sends this client's every connection to one backend: two are open on it when
    it is drained; a new one goes to the other backend, one open one finishes normally
    within the drain timeout, the other, still open after it, is closed."""
    ports = free_ports(3)
    echoes = [EchoBackend(f"b{i + 1}", port) for i, port in enumerate(ports[:2])]
    listen = f"tcp://127.0.0.1:{ports[2]}"
    try:
        backends = [{"id": f"b{i + 1}", "address": e.address} for i, e in enumerate(echoes)]
        services = {
            "long": {
                "strategy": "ip_hash",
                "listen": {"n1": listen},
                "backends": backends,
                "drain_timeout_ms": 1500,
            }
        }
        cluster = started_cluster(tmp_path, processes, 3, services=services)
        with Client(cluster.topology, timeout=10) as client:
            cluster.leader(client)
            wait_until(lambda: _answers(listen), 20, "the proxy")
            owner = exchange(listen).split(b":")[0].decode()
            other = "b2" if owner == "b1" else "b1"
            first, second = _open(listen), _open(listen)
            wait_until(lambda: _active(client, owner) == 2, 5, f"two open on {owner}")
            drained = run_ctl(cluster.topology, "backend", "drain", "long", owner, timeout=30)
            assert drained.returncode == 0, drained.stderr
            wait_until(lambda: _state(client, owner) == "draining", 5, f"{owner} draining")
            assert exchange(listen).startswith(other.encode())  # new work goes elsewhere
            first.sendall(b"finish")
            first.shutdown(socket.SHUT_WR)
            assert _read_all(first) == f"{owner}:open finish".encode()  # within the timeout
            wait_until(lambda: _active(client, owner) == 0, 10, "the other one closed")
            assert _read_all(second) == b""  # cut at the timeout, before it finished
            first.close()
            second.close()
    finally:
        for echo in echoes:
            echo.close()


def _open(address: str) -> socket.socket:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    connection = socket.create_connection((host, int(port)), timeout=10)
    connection.sendall(b"open ")
    return connection


def _read_all(connection: socket.socket) -> bytes:
    answer = b""
    try:
        while chunk := connection.recv(65536):
            answer += chunk
    except ConnectionError:
        pass
    return answer


def _row(client: Client, backend: str) -> dict:
    rows = client.status("n1")["balancer"]["long"]["backends"]
    return next(row for row in rows if row["id"] == backend)


def _active(client: Client, backend: str) -> int:
    return _row(client, backend)["active"]


def _state(client: Client, backend: str) -> str:
    return _row(client, backend)["state"]
