"""Operator membership commands on real nodes (CONTRACT 8): transfer-leader, promote, demote,
check-restart, remove-node refusing to break quorum, a voter that failover removed coming back
as a learner with add-node, and a rolling restart under writes."""

from __future__ import annotations

import json
import os
import signal
import sys

from caddy.client import Client
from tests.cluster.failover_helpers import FAST_CHECKS, all_healthy, with_learner
from tests.cluster.writers import finish_writers, start_writers
from tests.harness import CADDY_NODE, run_ctl, started_cluster, wait_until


def ctl(cluster, *args: str, timeout: float = 20.0):
    return run_ctl(cluster.topology, "--timeout", "10", *args, timeout=timeout)


def membership(client: Client, node: str) -> dict:
    return client.status(node)["membership"]


def test_transfer_promote_demote_and_the_refusals(tmp_path, processes):
    cluster = with_learner(tmp_path, processes)
    with Client(cluster.topology, timeout=10) as client:
        leader = cluster.leader(client)
        wait_until(lambda: all_healthy(client, leader), 20, "every member judged healthy")
        target = sorted({"n1", "n2", "n3"} - {leader})[0]

        refused = ctl(cluster, "transfer-leader", "n4")
        assert refused.returncode == 1
        assert "n4 is a learner, not a voter: only a data voter may lead" in refused.stderr
        moved = ctl(cluster, "--json", "transfer-leader", target)
        assert moved.returncode == 0, moved.stderr
        assert json.loads(moved.stdout)["leader"] == target
        assert client.leader() == target
        leader = target
        wait_until(lambda: all_healthy(client, leader), 20, "the new leader judging all healthy")

        promoted = ctl(cluster, "promote", "n4")
        assert promoted.returncode == 0, promoted.stderr
        assert promoted.stdout.startswith("promote n4: voters n1, n2, n3, n4")
        assert membership(client, leader)["voters"] == ["n1", "n2", "n3", "n4"]
        wait_until(
            lambda: not client.status(leader)["membership_change_pending"],
            20,
            "the promotion committed",
        )
        demoted = ctl(cluster, "demote", "n4")
        assert demoted.returncode == 0, demoted.stderr
        assert membership(client, leader) == {
            "voters": ["n1", "n2", "n3"],
            "learners": ["n4"],
            "witnesses": [],
        }
        again = ctl(cluster, "demote", "n4")
        assert again.returncode == 1 and "n4 is not a voter" in again.stderr
        own = ctl(cluster, "remove-node", leader)
        assert own.returncode == 1 and f"{leader} leads: move leadership first" in own.stderr

        follower, other = sorted({"n1", "n2", "n3"} - {leader})
        assert ctl(cluster, "check-restart", follower).stdout.strip() == "safe"
        leads = ctl(cluster, "check-restart", leader)
        assert leads.returncode == 1 and leads.stdout.startswith(f"unsafe: {leader} leads")

        cluster.kill(other)
        wait_until(
            lambda: client.status(leader)["failover"]["health"][other] == "failed",
            20,
            f"{other} judged failed",
        )
        unsafe = ctl(cluster, "check-restart", follower)
        assert unsafe.returncode == 1
        assert unsafe.stdout.strip() == (
            f"unsafe: not every other voting member is healthy and caught up: {other} (failed)"
        )
        breaking = ctl(cluster, "remove-node", follower)
        assert breaking.returncode == 1
        assert f"remove {follower} refused: afterwards 1 of its 2 voting members" in (
            breaking.stderr
        )
        assert membership(client, leader)["voters"] == ["n1", "n2", "n3"]  # nothing changed
        client.put("still-writing", 1)


def test_a_voter_removed_by_failover_comes_back_as_a_learner(tmp_path, processes):
    cluster = with_learner(tmp_path, processes, stabilization_ms=1000, min_action_interval_ms=300)
    with Client(cluster.topology, timeout=10) as client:
        leader = cluster.leader(client)
        client.put("before", 1)
        victim = sorted({"n1", "n2", "n3"} - {leader})[0]
        cluster.kill(victim)
        wait_until(
            lambda: (
                membership(client, leader)["voters"] == sorted({"n1", "n2", "n3", "n4"} - {victim})
            ),
            30,
            f"{victim} replaced by n4",
        )
        client.put("while-away", 2)
        cluster.start(victim)
        address = cluster.config.node(victim).address
        added = ctl(cluster, "add-node", victim, address, "--role", "learner")
        assert added.returncode == 0, added.stderr
        assert membership(client, leader)["learners"] == [victim]
        wait_until(
            lambda: client.status(victim)["applied_index"] >= client.status(leader)["commit_index"],
            30,
            f"{victim} caught up as a learner",
        )
        assert client.status(victim)["state"] == "learner"
        wrong = ctl(cluster, "add-node", "n9", "127.0.0.1:7109")
        assert wrong.returncode == 2 and "must be tcp://HOST:PORT" in wrong.stderr


RESTART_SCRIPT = """#!/bin/sh
# restart NODE: SIGTERM the node whose pid is in NODE.pid, wait for it to exit, start it again
set -e
cd "$(dirname "$0")"
pid=$(cat "$1.pid")
kill -TERM "$pid"
# until it exited (a zombie counts: the test that started it reaps it only at the end)
while [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
    sleep 0.05
done
setsid {python} {caddy_node} topology.yaml --node "$1" >> "$1.log" 2>&1 < /dev/null &
echo $! > "$1.pid"
"""


def test_a_rolling_restart_under_writes_costs_no_client_an_error(tmp_path, processes):
    cluster = started_cluster(tmp_path, processes, 3, failover=FAST_CHECKS)
    script = tmp_path / "restart.sh"
    script.write_text(RESTART_SCRIPT.format(python=sys.executable, caddy_node=CADDY_NODE))
    script.chmod(0o755)
    for node, process in cluster.nodes.items():
        (tmp_path / f"{node}.pid").write_text(str(process.pid))
    try:
        with Client(cluster.topology, timeout=10) as client:
            leader = cluster.leader(client)
            wait_until(lambda: all_healthy(client, leader), 20, "every member judged healthy")
            writers = start_writers(cluster.topology, 2)
            rolled = ctl(cluster, "rolling-restart", "--command", f"{script} {{node}}", timeout=300)
            assert rolled.returncode == 0, rolled.stderr
            lines = rolled.stdout.splitlines()
            restarted = [line.split(":")[0] for line in lines if "restarted, caught up" in line]
            assert sorted(restarted) == ["n1", "n2", "n3"] and restarted[-1] == leader
            assert f"{leader}: leadership moved to" in rolled.stdout
            finish_writers(cluster.topology, writers)
            for node in ("n1", "n2", "n3"):  # every node is a new process
                pid = int((tmp_path / f"{node}.pid").read_text())
                assert pid != cluster.nodes[node].pid
    finally:
        for node in ("n1", "n2", "n3"):
            pid = int((tmp_path / f"{node}.pid").read_text())
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
