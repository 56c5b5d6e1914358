"""Automatic failover on real nodes (CONTRACT 6): a leader whose own health check fails hands
leadership over; a killed voter is replaced by a caught-up learner and then removed; a leader
stopped by SIGTERM or drained by caddy-ctl hands over with no client noticing; a hook that
hangs is killed and costs the node nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

from caddy.client import Client
from caddy.errors import CaddyError
from tests.cluster.failover_helpers import FAST_CHECKS, all_healthy, with_learner
from tests.cluster.writers import finish_writers, start_writers
from tests.harness import CADDY_CTL, run_ctl, started_cluster, wait_until


def another_leader(client: Client, *before: str) -> str | None:
    leader = client.leader()
    return leader if leader not in (None, *before) else None


def write_passes(client: Client, key: str) -> bool:
    try:
        client.put(key, b"v")
    except CaddyError:  # Unavailable, NoQuorum, Timeout: not yet
        return False
    return True


def test_a_leader_whose_health_check_fails_hands_leadership_to_a_healthy_voter(tmp_path, processes):
    """...with writes in flight from two clients: they go on on the new leader, each applied
    once, with no error (the sessions move with the leadership)."""
    flags = tmp_path / "flags"
    flags.mkdir()
    for node in ("n1", "n2", "n3"):
        (flags / f"{node}.ok").touch()
    cluster = started_cluster(
        tmp_path,
        processes,
        3,
        failover={**FAST_CHECKS, "health_checks": [{"command": f"test -f {flags}/{{node}}.ok"}]},
    )
    with Client(cluster.topology, timeout=10) as client:
        old = cluster.leader(client)
        wait_until(lambda: all_healthy(client, old), 20, "every member judged healthy")
        writers = start_writers(cluster.topology, 2)
        (flags / f"{old}.ok").unlink()
        new = wait_until(lambda: another_leader(client, old), 20, "a new leader")
        finish_writers(cluster.topology, writers)  # on the new leader
        section = client.status(old)["failover"]
        assert section["health"][old] == "failed"
        assert f"test -f {flags}/{old}.ok" in section["reasons"][old]
        action = section["last_action"]
        assert action["kind"] == "transfer_leadership" and action["node"] == new
        assert action["refused"] is None and "unhealthy" in action["reason"]
        # The new leader sees the old one failed, by the verdict it gossips, and keeps it.
        wait_until(
            lambda: client.status(new)["failover"]["health"][old] == "failed",
            20,
            f"{new} judging {old} failed",
        )
        assert client.leader() == new


def test_a_dead_voter_is_replaced_by_the_learner_and_the_cluster_survives_one_more(
    tmp_path, processes
):
    cluster = with_learner(tmp_path, processes, stabilization_ms=1500, min_action_interval_ms=300)
    with Client(cluster.topology, timeout=10) as client:
        leader = cluster.leader(client)
        assert write_passes(client, "before")
        victim = sorted({"n1", "n2", "n3"} - {leader})[0]
        cluster.kill(victim)

        def replaced() -> bool:
            voters = set(client.status(leader)["quorum"]["voters"])
            return voters == {"n1", "n2", "n3", "n4"} - {victim}

        wait_until(replaced, 30, f"n4 a voter and {victim} removed")
        action = client.status(leader)["failover"]["last_action"]
        assert action["kind"] == "remove_voter" and action["node"] == victim
        assert client.status("n4")["state"] == "follower"

        survivor = sorted({"n1", "n2", "n3"} - {leader, victim})[0]
        cluster.kill(survivor)
        wait_until(lambda: write_passes(client, "after-two-kills"), 30, "a write with 2 of 3")
        assert client.get("before") == b"v"


def test_sigterm_of_the_leader_under_several_writers_costs_no_client_an_error(tmp_path, processes):
    cluster = started_cluster(tmp_path, processes, 3, failover={"drain_timeout_ms": 10_000})
    with Client(cluster.topology, timeout=10) as client:
        leader = cluster.leader(client)
        writers = start_writers(cluster.topology, 4, first_steps=10)
        cluster.kill(leader, signal.SIGTERM)
        assert cluster.nodes[leader].returncode == 0
        log = cluster.log_path(leader).read_text()
        assert "leadership moved to n" in log, log[-2000:]
        finish_writers(cluster.topology, writers, more_steps=10)


def test_caddy_ctl_drain_moves_leadership_and_undrain_takes_requests_again(tmp_path, processes):
    cluster = started_cluster(tmp_path, processes, 3)
    with Client(cluster.topology, timeout=10) as client:
        leader = cluster.leader(client)
        drained = run_ctl(cluster.topology, "drain", leader, "--timeout", "5", timeout=20)
        assert drained.returncode == 0, drained.stderr
        assert drained.stdout.startswith(f"{leader}: drained, leadership moved to n")
        section = client.status(leader)["failover"]
        assert section["draining"] and section["drain"]["state"] == "drained"
        assert client.leader() != leader
        other = sorted({"n1", "n2", "n3"} - {leader})[0]

        def gossiped_draining() -> bool:
            view = client.gather([other], "client.members", {}, 5)[other]
            member = (view or {}).get("members", {}).get(leader, {})  # once it heard of it
            return member.get("metadata", {}).get("draining") is True

        wait_until(gossiped_draining, 20, f"{other} hearing that {leader} drains")
        with Client(cluster.topology, timeout=10) as direct:
            direct._leader = leader  # the drained node redirects, the write still lands
            direct.put("during-drain", 1)
        undrained = run_ctl(cluster.topology, "--json", "undrain", leader)
        assert undrained.returncode == 0, undrained.stderr
        assert json.loads(undrained.stdout) == {"node": leader, "undrained": True}
        assert client.status(leader)["failover"]["draining"] is False
        again = run_ctl(cluster.topology, "undrain", leader)
        assert again.stdout.strip() == f"{leader}: was not draining"
        unknown = run_ctl(cluster.topology, "drain", "n9")
        assert unknown.returncode == 2 and "no node 'n9'" in unknown.stderr


def test_a_hook_that_hangs_is_killed_and_the_node_keeps_serving(tmp_path, processes):
    marks = tmp_path / "hook-runs"
    hook = f"echo $CADDY_EVENT_KIND >> {marks}; sleep 60"
    cluster = started_cluster(
        tmp_path, processes, 3, failover={"on_event": hook, "hook_timeout_ms": 500}
    )
    with Client(cluster.topology, timeout=10) as client:
        leader = cluster.leader(client)
        hooks = wait_until(
            lambda: (h := client.status(leader)["failover"]["hooks"])["failures"] and h,
            20,
            "a hook killed at its timeout",
        )
        assert hooks["last_failure"]["problem"] == "still running after 0.5 s (killed)"
        assert "leader.elected" in marks.read_text().split()
        assert write_passes(client, "while-hooks-hang")
        assert client.get("while-hooks-hang") == b"v"


def test_caddy_ctl_watch_shows_each_failover_event_once_in_order(tmp_path, processes):
    flags = tmp_path / "flags"
    flags.mkdir()
    for node in ("n1", "n2", "n3", "n4"):
        (flags / f"{node}.ok").touch()
    cluster = with_learner(
        tmp_path,
        processes,
        health_checks=[{"command": f"test -f {flags}/{{node}}.ok"}],
        stabilization_ms=1000,
        min_action_interval_ms=300,
    )
    watch = subprocess.Popen(
        [sys.executable, str(CADDY_CTL), "--topology", str(cluster.topology), "--json", "watch"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    processes.started.append(watch)  # killed at the end whatever happens
    lines: list[dict] = []
    reader = threading.Thread(
        target=lambda: lines.extend(json.loads(line) for line in watch.stdout), daemon=True
    )
    reader.start()
    with Client(cluster.topology, timeout=10) as client:
        first = cluster.leader(client)
        wait_until(lambda: all_healthy(client, first), 20, "every member judged healthy")
        (flags / f"{first}.ok").unlink()  # (a): the leader's own check fails
        second = wait_until(lambda: another_leader(client, first), 20, "a second leader")
        # (b): the failed voter is replaced by the learner, then removed
        wait_until(
            lambda: first not in client.status(second)["quorum"]["voters"], 30, f"{first} removed"
        )
        cluster.kill(second, signal.SIGTERM)  # (c): a drain that hands leadership over
        third = wait_until(lambda: another_leader(client, first, second), 20, "a third leader")
        wait_until(lambda: any(e["kind"] == "drain.finished" for e in lines), 20, "the drain")
        wait_until(
            lambda: any(e["kind"] == "leader.elected" and e["node"] == third for e in lines),
            20,
            f"{third} elected, in the watch",
        )
    watch.send_signal(signal.SIGINT)
    watch.wait(10)
    reader.join(10)
    keys = [(e["node"], e["seq"]) for e in lines]
    assert len(keys) == len(set(keys)), "an event shown twice"
    # Each node's own events come in the order they happened (across nodes, the wall clocks
    # of their publishing threads decide, which causality does not bind).
    stories = {
        first: [("member.failed", first), ("leadership.moved", second)],
        second: [
            ("leader.elected", None),
            ("member.failed", first),
            ("learner.promoted", "n4"),
            ("voter.removed", first),
            ("drain.started", None),
            ("leadership.moved", third),
            ("drain.finished", None),
        ],
        third: [("leader.elected", None)],
    }
    for node, story in stories.items():
        kinds = {kind for kind, _ in story}
        shown = [
            (e["kind"], e.get("member") or e.get("leader"))
            for e in lines
            if e["node"] == node and e["kind"] in kinds
        ]
        position = 0
        for kind, subject in story:
            while position < len(shown) and (
                shown[position][0] != kind or subject not in (None, shown[position][1])
            ):
                position += 1
            assert position < len(shown), f"{node}: {kind} {subject} missing or late in {shown}"
