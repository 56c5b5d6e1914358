"""`ClusterManager` in one process: start, status, a dead actor is reported, stop never hangs."""

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
