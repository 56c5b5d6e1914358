"""Settings reload on real nodes (CONTRACT 8): SIGHUP and `caddy-ctl reload NODE` take the live
settings of the re-read topology file at once; a broken file changes nothing."""

from __future__ import annotations

import signal

import yaml

from caddy.client import Client
from tests.harness import run_ctl, started_cluster, wait_until


def timings(client: Client, node: str) -> dict:
    return client.status(node)["timings"]


def rewrite(topology, **sections) -> None:
    document = yaml.safe_load(topology.read_text())
    for name, values in sections.items():
        document[name] = (
            {**document.get(name, {}), **values} if isinstance(values, dict) else values
        )
    topology.write_text(yaml.safe_dump(document, sort_keys=False))


def test_sighup_and_reload_take_live_settings_and_a_broken_file_changes_nothing(
    tmp_path, processes
):
    cluster = started_cluster(tmp_path, processes, 3)
    with Client(cluster.topology, timeout=10) as client:
        cluster.leader(client)
        before = timings(client, "n2")
        assert before["election_timeout_min_ms"] == 150
        rewrite(
            cluster.topology,
            raft={"election_timeout_min_ms": 400, "election_timeout_max_ms": 800},
            gossip={"profile": "fast"},
            log_level="WARNING",
            failover={
                "health_checks": [{"command": "false"}],
                "failure_threshold": 1,
                "health_check_interval_ms": 200,
            },
        )
        cluster.send_signal("n2", signal.SIGHUP)
        wait_until(
            lambda: timings(client, "n2")["election_timeout_min_ms"] == 400,
            10,
            "n2 taking the new election timeout",
        )
        assert timings(client, "n2")["election_timeout_max_ms"] == 800
        assert timings(client, "n3") == before  # only the signalled node reloaded
        wait_until(  # its failover runs the new check, which fails
            lambda: client.status("n2")["failover"]["health"]["n2"] == "failed",
            10,
            "n2 judging itself failed by the reloaded check",
        )
        log = cluster.log_path("n2").read_text()
        assert "reloaded raft.election_timeout_min_ms 150 -> 400" in log
        assert "reloaded log_level 'INFO' -> 'WARNING'" in log
        assert "gossip.profile 'lan' -> 'fast' needs a restart to take effect" in log

        reloaded = run_ctl(cluster.topology, "--timeout", "10", "reload", "n3", timeout=30)
        assert reloaded.returncode == 0, reloaded.stderr
        lines = reloaded.stdout.splitlines()
        assert "applied: raft.election_timeout_max_ms 300 -> 800" in lines
        assert "applied: raft.election_timeout_min_ms 150 -> 400" in lines
        assert "applied: failover.failure_threshold 3 -> 1" in lines
        assert "needs a restart: gossip.profile 'lan' -> 'fast'" in reloaded.stdout
        assert timings(client, "n3")["election_timeout_min_ms"] == 400

        cluster.topology.write_text("cluster: test\nnodes: [\n")  # not YAML any more
        cluster.send_signal("n1", signal.SIGHUP)
        wait_until(
            lambda: "reload refused, settings unchanged" in cluster.log_path("n1").read_text(),
            10,
            "n1 refusing the broken file",
        )
        assert "topology.yaml" in cluster.log_path("n1").read_text().split("reload refused")[1]
        assert timings(client, "n1") == before
        cluster.check_alive()
        client.put("after-the-reloads", 1)
        assert client.get("after-the-reloads") == 1
