"""Vote records on real nodes (CONTRACT 5, `caddy-ctl votes NODE`): each follower shows the vote
that elected the leader, and a node killed and restarted still shows the votes it cast before."""

import json

import pytest

from caddy.client import Client
from tests.harness import run_ctl, started_cluster, wait_until


@pytest.fixture
def cluster(tmp_path, processes):
    return started_cluster(tmp_path, processes, 3)


def granted_for(votes, leader, term):
    """The real votes (not pre-votes) granted to `leader` in `term`: a follower may have granted
    only the pre-vote when the other follower's vote already made the leader."""
    return [
        v
        for v in votes
        if v["granted"] and not v["pre_vote"] and v["candidate"] == leader and v["term"] == term
    ]


def test_followers_show_the_vote_that_elected_the_leader_and_keep_it_across_a_restart(cluster):
    with Client(cluster.topology, timeout=10) as client:
        leader = cluster.leader(client)
        term = client.status(leader)["term"]
        followers = sorted({"n1", "n2", "n3"} - {leader})
        voters = wait_until(
            lambda: [
                f
                for f in followers
                if granted_for(client.status(f)["votes"]["recent"], leader, term)
            ],
            10,
            "a follower's granted vote",
        )
        shown = run_ctl(cluster.topology, "--json", "votes", voters[0])
        assert shown.returncode == 0, shown.stderr
        document = json.loads(shown.stdout)
        assert document["node"] == voters[0] and granted_for(document["votes"], leader, term)
        table = run_ctl(cluster.topology, "votes", voters[0]).stdout.splitlines()
        assert table[0].split() == ["time", "term", "candidate", "kind", "granted", "reason"]
        assert any(line.split()[1:5] == [str(term), leader, "vote", "yes"] for line in table[1:])

        cluster.restart(voters[0])
        before = wait_until(
            lambda: client.statuses()[voters[0]], 20, f"{voters[0]} answering again"
        )
        assert granted_for(before["votes"]["recent"], leader, term)  # read back from its file
        refused = run_ctl(cluster.topology, "votes", "n9")
        assert refused.returncode == 2 and "no node 'n9'" in refused.stderr
