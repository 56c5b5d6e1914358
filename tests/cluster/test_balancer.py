"""The balancer subsystem on real nodes with real TCP backends (CONTRACT 7): picks follow the
weights, a backend that stops listening is judged unhealthy by every node's checks and picked
no more, a drained one neither, and a backend added with `caddy-ctl backend add` is known to
all 3 nodes at once."""

from __future__ import annotations

import json
import socket
from collections import Counter
from functools import partial

from actors.local_cluster import free_ports
from caddy.client import Client
from tests.harness import run_ctl, started_cluster, wait_until

CHECKS = {"interval_ms": 200, "failure_threshold": 2}


class Listener:
    """A TCP port that accepts connections (the kernel's backlog does), until closed."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_server(("127.0.0.1", port))
        self.address = f"tcp://127.0.0.1:{port}"

    def close(self) -> None:
        self.socket.close()


def states(client: Client, backend: str) -> set[str]:
    """What every node's balancer says of `backend` (a node that does not list it: missing)."""
    found = set()
    for status in client.statuses().values():
        rows = ((status or {}).get("balancer") or {}).get("api", {}).get("backends", [])
        found |= {row["state"] for row in rows if row["id"] == backend} or {"missing"}
    return found


def test_picks_follow_weights_and_health_drains_and_additions_on_every_node(tmp_path, processes):
    listeners = [Listener(port) for port in free_ports(4)]
    try:
        backends = [
            {"id": f"b{i + 1}", "address": listener.address, "weight": weight}
            for i, (listener, weight) in enumerate(zip(listeners[:3], (2, 1, 1), strict=True))
        ]
        services = {"api": {"strategy": "weighted", "health": CHECKS, "backends": backends}}
        cluster = started_cluster(tmp_path, processes, 3, services=services)
        ctl = partial(run_ctl, cluster.topology, "--timeout", "10", timeout=30)
        with Client(cluster.topology, timeout=10) as client:
            cluster.leader(client)
            for backend in ("b1", "b2", "b3"):
                wait_until(lambda b=backend: states(client, b) == {"healthy"}, 20, f"{backend} up")
            counts = Counter(client.pick("api")["id"] for _ in range(400))
            assert abs(counts["b1"] - 200) <= 8 and abs(counts["b2"] - 100) <= 8, counts

            listeners[1].close()  # b2 stops listening: 2 failed checks of 200 ms
            wait_until(lambda: states(client, "b2") == {"unhealthy"}, 5, "b2 unhealthy everywhere")
            assert "b2" not in {client.pick("api")["id"] for _ in range(40)}

            assert ctl("backend", "drain", "api", "b3").returncode == 0
            wait_until(lambda: states(client, "b3") == {"draining"}, 5, "b3 draining everywhere")
            assert {client.pick("api")["id"] for _ in range(20)} == {"b1"}

            added = ctl("backend", "add", "api", "b4", listeners[3].address, "--weight", "3")
            assert added.returncode == 0, added.stderr
            wait_until(lambda: "missing" not in states(client, "b4"), 1, "b4 on all 3 nodes")
            wait_until(lambda: states(client, "b4") == {"healthy"}, 5, "b4 healthy")
            assert "b4" in {client.pick("api")["id"] for _ in range(20)}

            shown = ctl("--json", "backends", "api")
            assert shown.returncode == 0, shown.stderr
            rows = json.loads(shown.stdout)["backends"]
            assert {(r["node"], r["id"]) for r in rows} == {
                (node, backend)
                for node in ("n1", "n2", "n3")
                for backend in ("b1", "b2", "b3", "b4")
            }
            assert {r["state"] for r in rows if r["id"] == "b2"} == {"unhealthy"}
            assert sum(r["picks"] for r in rows) >= 480  # every pick above was counted somewhere
            picked = ctl("pick", "api", "--key", "10.1.2.3")
            assert picked.returncode == 0 and picked.stdout.split()[0] in {"b1", "b4"}
            unknown = ctl("pick", "web")
            assert unknown.returncode == 1 and "no service 'web' (services: api)" in unknown.stderr
    finally:
        for listener in listeners:
            listener.close()
