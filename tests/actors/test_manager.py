"""`ClusterManager` in one process: start, status, a dead actor is reported, stop never hangs."""

import threading

import pykka
import pytest

from actors.manager import ClusterManager
from actors.transport import Inbound
from caddy.client import Client
from caddy.config import load_topology
from tests.harness import wait_until, write_topology


@pytest.fixture
def node(tmp_path):
    config = load_topology(write_topology(tmp_path, 1))
    manager = ClusterManager("n1", config).start()
    yield manager
    manager.stop(graceful=False)
    pykka.ActorRegistry.stop_all()


def test_a_single_node_elects_itself_and_serves_writes(node):
    with Client(node.config, timeout=10) as client:
        client.put("k", "v")
        assert client.get("k") == "v"
    status = node.status()
    assert (status["state"], status["leader"]) == ("leader", "n1")
    assert status["applied_index"] >= 2
    assert node.raft() is not None and node.membership() is not None


def test_a_dead_actor_is_reported_and_stop_still_returns(node):
    assert node.failed_actors() == []
    # A message no driver can handle: the actor dies.
    node.raft().actor_ref.tell(Inbound(envelope=None))
    assert wait_until(node.failed_actors, 10, "the raft actor to be reported dead") == ["RaftActor"]
    node.stop(graceful=False)


def test_on_leadership_runs_the_callback_with_the_term_as_token_and_tells_it_when_it_ends(
    tmp_path,
):
    config = load_topology(write_topology(tmp_path, 1))
    manager = ClusterManager("n1", config)
    tokens, ended = [], threading.Event()

    def lead(token):
        tokens.append(token)
        token.lost.wait()  # leader-only work runs until the leadership ends
        ended.set()

    def broken(token):
        raise RuntimeError("a user's bug")  # logged; the node and the other callback go on

    manager.on_leadership(broken)
    manager.on_leadership(lead)
    manager.start()
    try:
        wait_until(lambda: tokens, 10, "the callback to run")
        assert tokens[0] == manager.status()["term"] and isinstance(tokens[0], int)
        assert not tokens[0].lost.is_set() and not ended.is_set()
        assert manager.failed_actors() == []
    finally:
        manager.stop(graceful=False)
        pykka.ActorRegistry.stop_all()
    assert ended.wait(10) and tokens[0].lost.is_set()


def test_a_new_leadership_ends_the_last_token_and_brings_a_greater_one():
    from actors.leadership import LeadershipRunner
    from caddy.events import LeaderElected, LeaderLost

    seen = []
    runner = LeadershipRunner("n1", seen.append)
    runner(LeaderElected(node="n1", seq=1, time=0.0, term=3))
    wait_until(lambda: seen, 5, "the first run")
    runner(LeaderLost(node="n1", seq=2, time=0.0, term=4, leader="n2"))
    assert seen[0] == 3 and seen[0].lost.is_set()
    runner(LeaderElected(node="n1", seq=3, time=0.0, term=5))
    wait_until(lambda: len(seen) == 2, 5, "the second run")
    assert seen[1] == 5 > seen[0] and not seen[1].lost.is_set()
