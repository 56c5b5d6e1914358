"""`caddy-node` and `caddy-ctl` as real processes: start, status, SIGTERM, kill -9 and restart."""

import os
import signal
import time

from tests.harness import ctl_json, descendants, run_ctl, wait_until, write_topology


def hearing(status):
    return {peer for peer, info in status["peers"].items() if info["hearing"]}


def everyone_hears_everyone(topology):
    statuses = ctl_json(topology, "status")
    if not statuses or any(s is None for s in statuses.values()):
        return False
    return all(hearing(s) == set(statuses) - {node} for node, s in statuses.items())


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_supervisor_starts_all_nodes_and_sigterm_stops_them(tmp_path, processes):
    topology = write_topology(tmp_path, 3)
    supervisor = processes.node(topology)
    wait_until(lambda: everyone_hears_everyone(topology), 20, "3 nodes hearing each other")
    children = wait_until(
        lambda: len(descendants(supervisor.pid)) >= 3 and descendants(supervisor.pid),
        5,
        "3 child processes",
    )
    table = run_ctl(topology, "status")
    assert table.returncode == 0
    assert [line.split()[0] for line in table.stdout.splitlines()[1:]] == ["n1", "n2", "n3"]

    stopped_at = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=10) == 0
    wait_until(lambda: not any(alive(pid) for pid in children), 5, "every child gone")
    assert time.monotonic() - stopped_at < 5


def test_killed_node_is_reported_unreachable_and_restart_restores_the_view(tmp_path, processes):
    topology = write_topology(tmp_path, 3)
    nodes = {node_id: processes.node(topology, node_id) for node_id in ("n1", "n2", "n3")}
    wait_until(lambda: everyone_hears_everyone(topology), 20, "3 nodes hearing each other")

    os.kill(nodes["n3"].pid, signal.SIGKILL)
    nodes["n3"].wait(timeout=10)

    def survivors_lost_n3():
        statuses = ctl_json(topology, "status")
        return (
            statuses
            and statuses["n3"] is None
            and all(hearing(statuses[n]) == {"n1", "n2"} - {n} for n in ("n1", "n2"))
        )

    wait_until(survivors_lost_n3, 10, "n1 and n2 to stop hearing n3")
    table = run_ctl(topology, "status")
    assert "unreachable" in table.stdout.splitlines()[3]

    processes.node(topology, "n3")
    wait_until(lambda: everyone_hears_everyone(topology), 20, "the full view again")


def test_node_sigterm_exits_cleanly(tmp_path, processes):
    topology = write_topology(tmp_path, 1)
    node = processes.node(topology, "n1")
    # As the leader: a lone voter has nobody to hand leadership to, and its drain ends at once.
    wait_until(
        lambda: (ctl_json(topology, "status").get("n1") or {}).get("state") == "leader",
        20,
        "n1 to lead",
    )
    node.send_signal(signal.SIGTERM)
    assert node.wait(timeout=10) == 0


def test_status_of_a_stopped_cluster_fails_with_one_line(tmp_path):
    topology = write_topology(tmp_path, 2)
    result = run_ctl(topology, "status", "n1", timeout=0.5)
    assert result.returncode == 1
    assert result.stderr.strip() == "caddy-ctl: node n1 did not answer within 0.5 s"
