"""The FencingActor in one node process: the node of a 3-node topology whose peers never start
tells `quorum.lost` and `partition.detected` with the sides it sees, and its status section says
so; the section has CONTRACT 5's fields."""

import queue

import pykka
import pytest

from actors.manager import ClusterManager
from caddy.config import load_topology
from tests.harness import wait_until, write_topology


@pytest.fixture
def lonely_node(tmp_path):
    node = ClusterManager("n1", load_topology(write_topology(tmp_path, 3)))
    told = queue.SimpleQueue()
    node.subscribe(told.put, kinds=["quorum.", "partition."])
    node.start()
    yield node, told
    node.stop(graceful=False)
    pykka.ActorRegistry.stop_all()


def test_a_node_whose_peers_never_come_tells_it_has_no_quorum(lonely_node):
    node, told = lonely_node
    first, second = told.get(timeout=10), told.get(timeout=10)
    assert (first.kind, first.reachable, first.unreachable) == (
        "quorum.lost",
        ("n1",),
        ("n2", "n3"),
    )
    assert (second.kind, second.reachable, second.unreachable) == (
        "partition.detected",
        ("n1",),
        ("n2", "n3"),
    )
    section = wait_until(
        lambda: (q := node.status()["quorum"]) and not q["has_quorum"] and q, 5, "the section"
    )
    assert section == {
        "has_quorum": False,
        "voters": ["n1", "n2", "n3"],
        "witnesses": [],
        "reachable": ["n1"],
        "needed": 2,
        "since": section["since"],
    }
    assert first.time - 1 <= section["since"] <= first.time + 1
