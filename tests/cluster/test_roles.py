"""Learners and witnesses in real node processes: who votes, who leads, who applies."""

from caddy.client import Client
from tests.harness import LocalCluster, wait_until, write_topology


def test_witness_keeps_quorum_and_learner_follows_without_voting(tmp_path, processes):
    topology = write_topology(
        tmp_path,
        4,
        roles=["voter", "voter", "witness", "learner"],
        raft={"snapshot_threshold": 50},
    )
    cluster = LocalCluster(topology, processes)
    cluster.start("n1", "n2", "n3", "n4")
    with Client(topology, timeout=20) as client, Client(topology, timeout=1) as probe:
        leader = cluster.leader(client)
        assert leader in ("n1", "n2")  # a witness never leads, a learner never campaigns
        for i in range(120):  # past the snapshot threshold: the witness trims its log
            client.put(f"k{i}", i)

        statuses = wait_until(
            lambda: (
                (s := probe.statuses())
                and all(s.values())
                and s["n4"]["applied_index"] == s[leader]["applied_index"]
                and s
            ),
            20,
            "the learner to apply everything",
        )
        assert statuses["n3"]["state"] == "witness"
        assert statuses["n4"]["state"] == "learner"
        assert statuses["n3"]["snapshot_index"] > 0  # the witness trimmed its committed log
        assert statuses["n4"]["snapshot_index"] > 0  # the learner snapshots like a voter

        # The other voter dies: the remaining voter and the witness are still a majority of 3.
        other = "n2" if leader == "n1" else "n1"
        cluster.kill(other)
        client.put("after", "kill")
        assert client.get("after") == "kill"
        assert client.get("k119") == 119

        # Now the leader dies too: the witness and the learner cannot elect anyone.
        cluster.kill(leader)
        wait_until(
            lambda: (
                (s := probe.statuses())
                and s["n3"]
                and s["n3"]["state"] != "leader"
                and s["n4"]["state"] == "learner"
            ),
            10,
            "no witness or learner leader",
        )
        cluster.start(leader)
        assert cluster.leader(probe) == leader  # with the witness's vote: 2 of 3
        assert client.get("after") == "kill"
