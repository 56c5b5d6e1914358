"""Faults against real node processes: kill -9, SIGSTOP, SIGTERM; nothing acknowledged is lost."""

import signal

import pytest

from caddy.client import Client
from tests.cluster.writers import CasWriter, check_all_acknowledged, writes_reach
from tests.harness import started_cluster, wait_until

NODES = ("n1", "n2", "n3")


@pytest.fixture
def cluster(tmp_path, processes):
    return started_cluster(tmp_path, processes, 3, raft={"snapshot_threshold": 100})


def test_kill_leader_under_writes_loses_nothing_and_applies_once(cluster):
    with Client(cluster.topology, timeout=20) as client:
        first_leader = cluster.leader(client)
        writer = CasWriter(cluster.topology)
        writer.start()
        writes_reach(writer, 30)
        cluster.kill(first_leader)
        before = writer.acknowledged
        writes_reach(writer, before + 30)
        new_leader = cluster.leader(client)
        assert new_leader != first_leader
        writer.stop.set()
        writer.join(30)
        assert not writer.failures, writer.failures
        check_all_acknowledged(cluster.topology, writer.acknowledged)


def test_the_leader_stops_pipelining_to_a_dead_follower_and_resumes_when_it_returns(cluster):
    """The transport's dropped sends reach the Raft core (report_unreachable): the leader probes
    a dead follower instead of filling its window, and pipelines again once it is back."""
    with Client(cluster.topology, timeout=20) as client:
        leader = cluster.leader(client)
        follower = next(n for n in NODES if n != leader)

        def view_of_follower():
            return client.status(leader)["followers"].get(follower, {})

        wait_until(lambda: view_of_follower().get("state") == "replicate", 20, "replicating")
        cluster.kill(follower)
        client.put("while-down", 1)
        wait_until(lambda: view_of_follower().get("state") == "probe", 20, "probing the dead one")
        cluster.start(follower)
        client.put("after", 2)
        wait_until(
            lambda: (
                view_of_follower()
                == {"match": client.status(leader)["last_log_index"], "state": "replicate"}
            ),
            30,
            "replicating to it again, caught up",
        )


def test_restarted_follower_catches_up_through_a_snapshot(cluster):
    with Client(cluster.topology, timeout=20) as client:
        leader = cluster.leader(client)
        follower = next(n for n in NODES if n != leader)
        cluster.kill(follower)
        for i in range(300):  # three times the snapshot threshold of the test topology
            client.put(f"k{i}", i)
        leader_status = client.status(leader)
        assert leader_status["snapshot_index"] > 0
        cluster.start(follower)

        def caught_up():
            status = client.status(follower) if _answers(client, follower) else None
            leader_now = client.status(leader)
            return status and status["applied_index"] == leader_now["applied_index"] and status

        status = wait_until(caught_up, 30, f"{follower} to catch up")
        assert status["snapshot_index"] > 0  # it was brought up to date by a snapshot
        for i in (0, 150, 299):
            assert client.get(f"k{i}") == i


def _answers(client, node_id):
    return client.statuses().get(node_id) is not None


def test_kill_every_node_mid_stream_then_restart_keeps_acknowledged_writes(cluster):
    writer = CasWriter(cluster.topology)
    writer.start()
    writes_reach(writer, 80)  # 160 entries: past the snapshot threshold, so restarts load one
    for node_id in NODES:
        cluster.kill(node_id)
    acknowledged = writer.acknowledged
    writer.stop.set()
    cluster.start(*NODES)
    writer.join(40)
    # The step in flight during the kills may or may not have been applied; all before it were.
    with Client(cluster.topology, timeout=20) as client:
        counter = client.get("counter")
        assert counter in (acknowledged, acknowledged + 1)
        for step in range(1, acknowledged + 1):
            assert client.get(f"step-{step}") == step


def test_paused_leader_steps_down_and_serves_nothing_stale(cluster):
    with Client(cluster.topology, timeout=20) as client, Client(cluster.topology, 1) as probe:
        old_leader = cluster.leader(client)
        client.put("k", "before")
        cluster.stop_signal(old_leader, signal.SIGSTOP)
        try:
            new_leader = wait_until(
                lambda: (leader := probe.leader()) not in (None, old_leader) and leader,
                20,
                "a new leader while the old one is paused",
            )
            client.put("k", "after")
        finally:
            cluster.stop_signal(old_leader, signal.SIGCONT)
        # The old leader learns of the new term and steps down without serving anything.
        wait_until(
            lambda: (s := client.statuses()[old_leader]) and s["state"] == "follower",
            20,
            "the old leader to step down",
        )
        assert client.get("k") == "after"
        with Client(cluster.topology, timeout=5) as direct:
            direct._leader = old_leader  # aim the first attempt at the deposed leader
            assert direct.get("k") == "after"
            direct._leader = old_leader
            direct.put("k", "later")
        assert client.status(new_leader)["state"] in ("leader", "follower")
        assert client.get("k") == "later"


def test_sigterm_of_the_leader_hands_leadership_over(cluster):
    with Client(cluster.topology, timeout=20) as client:
        leader = cluster.leader(client)
        writer = CasWriter(cluster.topology)
        writer.start()
        writes_reach(writer, 20)
        cluster.kill(leader, signal.SIGTERM)
        assert cluster.nodes[leader].returncode == 0
        log = (cluster.topology.parent / f"{leader}.log").read_text()
        assert "leadership moved to n" in log, log[-2000:]
        before = writer.acknowledged
        writes_reach(writer, before + 20)
        writer.stop.set()
        writer.join(30)
        assert not writer.failures, writer.failures
        check_all_acknowledged(cluster.topology, writer.acknowledged)


def test_a_write_that_cannot_commit_times_out_on_the_node(tmp_path, processes):
    """Without CheckQuorum an isolated leader keeps leading; its stuck writes still get an
    answer (outcome unknown, retry) once the request timeout passes."""
    local = started_cluster(
        tmp_path, processes, 3, raft={"check_quorum": False}, transport={"request_timeout_ms": 500}
    )
    with Client(local.topology, timeout=20) as client:
        leader = local.leader(client)
        followers = [n for n in NODES if n != leader]
        for follower in followers:
            local.stop_signal(follower, signal.SIGSTOP)
        try:
            write = {"key": "k", "value": 1, "client": "stuck-writer", "seq": 1, "ack": 1}
            answer = client.gather([leader], "kv.put", write, 5.0, raw=True)[leader]
            assert answer is not None and answer.kind == "kv.error"
            assert answer.body == {"error": "request timeout", "retry": True}
        finally:
            for follower in followers:
                local.stop_signal(follower, signal.SIGCONT)
