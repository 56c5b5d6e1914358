"""Locks with fencing tokens on real node processes (CONTRACT 5): grants and handovers in line,
tokens that only grow, fenced writes, the lease of a holder that stops renewing, and the classic
fencing scenario: a holder paused past its lease is refused by the cluster and by the resource
after another client took the lock."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from actors.local_cluster import REPO
from caddy.client import Client
from caddy.errors import FencedOut, Timeout
from caddy.fencing_sqlite import SqliteFence
from tests.harness import run_ctl, started_cluster


@pytest.fixture
def cluster(tmp_path, processes):
    local = started_cluster(tmp_path, processes, 3)
    with Client(local.topology, timeout=10) as client:
        local.leader(client)
    return local


def test_a_lock_is_granted_in_line_with_ever_greater_tokens_and_fences_writes(cluster):
    with Client(cluster.topology, timeout=10) as alice, Client(cluster.topology) as bob:
        with alice.lock("job", ttl=5) as first:
            assert first.held() and first.token >= 1
            alice.put("out", "alice", fence=first)
            with pytest.raises(Timeout):
                bob.lock("job", ttl=5)  # no wait: held by alice
            got = {}
            waiter = threading.Thread(target=lambda: got.update(lock=bob.lock("job", 5, wait=10)))
            waiter.start()
        waiter.join(timeout=15)  # alice's release hands the lock to bob, who waited in line
        second = got["lock"]
        assert second.held() and second.token > first.token
        with pytest.raises(FencedOut):
            alice.put("out", "alice again", fence=first)
        bob.put("out", "bob", fence=second)
        second.release()
        with pytest.raises(FencedOut):
            bob.put("out", "after release", fence=second)
        assert alice.get("out") == "bob"
        assert alice.lock("job", ttl=5).token > second.token


def test_a_paused_holder_is_refused_by_the_cluster_and_the_resource_after_another_took_over(
    cluster, processes, tmp_path
):
    database = tmp_path / "resource.db"
    conn = sqlite3.connect(database)
    fence = SqliteFence()
    with conn:
        fence.create(conn)
        conn.execute("CREATE TABLE reports (author TEXT)")
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.lock_holder", str(cluster.topology)]
        + [str(database), "reports", "1.0"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    processes.started.append(holder)
    old_token = json.loads(holder.stdout.readline())["token"]
    os.kill(holder.pid, signal.SIGSTOP)  # past its 1 s lease: its renewals stop with it
    with Client(cluster.topology, timeout=10) as client:
        with client.lock("reports", ttl=10, wait=15) as lock:  # granted once the lease lapsed
            assert lock.token > old_token
            client.put("report", "new holder", fence=lock)
            with conn:
                fence.check(conn, "reports", lock.token)
                conn.execute("INSERT INTO reports VALUES (?)", ("new holder",))
            os.kill(holder.pid, signal.SIGCONT)
            out, _ = holder.communicate("go\n", timeout=30)
        assert json.loads(out) == {
            "held": False,
            "kv": "fenced_out",
            "resource": "stale",
            "release": "lost",
        }
        assert client.get("report") == "new holder"
    assert conn.execute("SELECT author FROM reports").fetchall() == [("new holder",)]


def test_caddy_ctl_lock_runs_a_command_holding_the_lock_with_its_token(cluster):
    script = 'echo "token=$CADDY_FENCING_TOKEN"; exit 3'
    ran = run_ctl(cluster.topology, "lock", "nightly", "--ttl", "5", "--", "sh", "-c", script)
    assert ran.returncode == 3, ran.stderr
    printed, shown_by_command = ran.stdout.split()
    token = int(printed)
    assert shown_by_command == f"token={token}"
    with Client(cluster.topology) as client:  # released when the command exited
        assert client.lock("nightly", ttl=5).token > token
    shown = run_ctl(cluster.topology, "--json", "lock", "free", "--ttl", "5", "--", "true")
    assert shown.returncode == 0 and json.loads(shown.stdout.splitlines()[0])["token"] > token
    with Client(cluster.topology) as client, client.lock("busy", ttl=10):
        refused = run_ctl(cluster.topology, "lock", "busy", "--wait", "0.5", "--", "true")
        assert refused.returncode == 1 and "not acquired" in refused.stderr


def test_a_release_not_waited_for_comes_before_the_same_clients_next_acquire(cluster):
    with Client(cluster.topology, timeout=10) as client, Client(cluster.topology) as other:
        tokens = []
        for _ in range(20):
            lock = client.lock("loop", ttl=5)  # no wait: the release sent before must be applied
            tokens.append(lock.token)
            lock.release(wait=False)
        assert tokens == sorted(set(tokens))
        assert other.lock("loop", ttl=5, wait=5).token > tokens[-1]


def test_a_held_lock_is_renewed_in_the_background_past_its_ttl(cluster):
    with Client(cluster.topology, timeout=10) as client, Client(cluster.topology) as other:
        with client.lock("renewed", ttl=0.6) as lock:
            until = time.monotonic() + 5 * lock.ttl  # the thing under test is time passing
            while time.monotonic() < until:
                assert lock.held()
                time.sleep(0.05)
            client.put("out", "still mine", fence=lock)  # the cluster agrees it still holds
            with pytest.raises(Timeout):
                other.lock("renewed", ttl=5)
