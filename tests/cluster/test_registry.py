"""The replicated service registry on real nodes (CONTRACT 7): seeded from the topology by the
first leader, changed with `caddy-ctl backend`, the same on every node, kept across a restart."""

from __future__ import annotations

import json
from functools import partial

from caddy.client import Client
from tests.harness import run_ctl, started_cluster, wait_until

SERVICES = {
    "api": {
        "strategy": "weighted",
        "backends": [
            {"id": "b1", "address": "tcp://127.0.0.1:9001", "weight": 2},
            {"id": "b2", "address": "tcp://127.0.0.1:9002"},
        ],
    }
}


def registries(client: Client) -> dict:
    return {node: status["registry"] for node, status in client.statuses().items() if status}


def backends_everywhere(client: Client, expected: list[dict]) -> bool:
    found = registries(client)
    return len(found) == 3 and all(r["services"].get("api") == expected for r in found.values())


def entry(backend: str, address: str, weight: int = 1, draining: bool = False) -> dict:
    return {"id": backend, "address": address, "weight": weight, "draining": draining}


B1 = entry("b1", "tcp://127.0.0.1:9001", 2)
B2 = entry("b2", "tcp://127.0.0.1:9002")


def test_the_registry_is_seeded_changed_and_the_same_on_every_node(tmp_path, processes):
    cluster = started_cluster(tmp_path, processes, 3, services=SERVICES)
    ctl = partial(run_ctl, cluster.topology, "--timeout", "10", timeout=30)
    with Client(cluster.topology, timeout=10) as client:
        cluster.leader(client)
        wait_until(lambda: backends_everywhere(client, [B1, B2]), 20, "the seed on every node")

        added = ctl("backend", "add", "api", "b3", "tcp://127.0.0.1:9003", "--weight", "5")
        assert added.returncode == 0, added.stderr
        assert added.stdout.splitlines()[0] == "add api/b3: done"
        b3 = entry("b3", "tcp://127.0.0.1:9003", 5)
        wait_until(lambda: backends_everywhere(client, [B1, B2, b3]), 5, "b3 on every node")

        again = ctl("backend", "add", "api", "b3", "tcp://127.0.0.1:9003")
        assert again.returncode == 1 and "b3 is a backend of api already" in again.stderr
        unknown = ctl("backend", "drain", "web", "b1")
        assert unknown.returncode == 1 and "no service 'web' (services: api)" in unknown.stderr
        bad = ctl("backend", "weight", "api", "b1", "0")
        assert bad.returncode == 2 and "must be an integer 1 to 1000000" in bad.stderr

        assert ctl("backend", "drain", "api", "b2").returncode == 0
        weighed = ctl("--json", "backend", "weight", "api", "b3", "1")
        assert weighed.returncode == 0, weighed.stderr
        b2_draining, b3_light = {**B2, "draining": True}, {**b3, "weight": 1}
        assert json.loads(weighed.stdout)["backends"] == [B1, b2_draining, b3_light]
        assert ctl("backend", "remove", "api", "b1").returncode == 0
        final = [b2_draining, b3_light]
        wait_until(lambda: backends_everywhere(client, final), 5, "the changes on every node")

        follower = next(n for n in ("n1", "n2", "n3") if n != client.leader())
        cluster.restart(follower)  # kill -9: the registry comes back from its log
        wait_until(lambda: backends_everywhere(client, final), 20, "the registry after a restart")
