"""The quorum view of real node processes (CONTRACT 5's `quorum` status section): a node that
can reach a majority says so, one left alone says it has no quorum within the contact window
(and a client that reaches only it raises NoQuorum), and the view comes back when the others
do."""

import pytest

from caddy.client import Client
from caddy.errors import NoQuorum
from tests.harness import ctl_json, run_ctl, started_cluster, wait_until


@pytest.fixture
def cluster(tmp_path, processes):
    return started_cluster(tmp_path, processes, 3)


def quorum(client, node_id):
    return client.status(node_id)["quorum"]


def test_a_node_left_alone_has_no_quorum_and_regains_it(cluster):
    with Client(cluster.topology, timeout=10) as client:
        cluster.leader(client)
        view = wait_until(
            lambda: (q := quorum(client, "n1"))["reachable"] == ["n1", "n2", "n3"] and q,
            10,
            "n1 reaching everyone",
        )
        assert view["has_quorum"] is True and view["needed"] == 2
        assert view["voters"] == ["n1", "n2", "n3"] and view["witnesses"] == []
        assert isinstance(view["since"], float)

        cluster.pause("n3")
        view = wait_until(
            lambda: (q := quorum(client, "n1"))["reachable"] == ["n1", "n2"] and q,
            10,
            "n1 no longer reaching the paused n3",
        )
        assert view["has_quorum"] is True  # two of three

        cluster.pause("n2")
        view = wait_until(
            lambda: not (q := quorum(client, "n1"))["has_quorum"] and q,
            10,
            "n1, alone, without quorum",
        )
        assert view["reachable"] == ["n1"]
        with Client(cluster.topology, timeout=1) as writer, pytest.raises(NoQuorum):
            writer.put("k", "alone")  # n1 answers no_quorum, the others are silent
        table = run_ctl(cluster.topology, "quorum", timeout=1).stdout.splitlines()
        rows = {line.split()[0]: line.split()[1:4] for line in table[1:]}
        assert table[0].split()[:4] == ["id", "has_quorum", "reachable", "needed"]
        assert rows["n1"] == ["NO", "n1", "2"]
        assert rows["n2"] == rows["n3"] == ["unreachable", "-", "-"]
        lost_since = view["since"]

        cluster.resume("n2")
        cluster.resume("n3")
        view = wait_until(
            lambda: (
                (q := quorum(client, "n1"))["has_quorum"]
                and q["reachable"] == ["n1", "n2", "n3"]
                and q
            ),
            20,
            "n1 reaching everyone again",
        )
        assert view["since"] > lost_since  # when has_quorum last changed
        shown = wait_until(
            lambda: (
                (v := ctl_json(cluster.topology, "quorum", timeout=5))
                and all(q and q["has_quorum"] for q in v.values())
                and v
            ),
            10,
            "caddy-ctl quorum showing every node with quorum",
        )
        assert sorted(shown) == ["n1", "n2", "n3"]
        assert shown["n1"] == quorum(client, "n1") | {"since": shown["n1"]["since"]}
