"""The leader's view the failover and reconfiguration rules read, for their unit tests: n1 leads
voters n1..n3 and learner n4, all healthy and at index 50, unless a test says otherwise."""

from __future__ import annotations

from dataclasses import replace

from caddy.failover import ClusterView, Health, Verdict

OK = Verdict(Health.HEALTHY, 0.0)
NOW = 100.0


def leader_view(**changes: object) -> ClusterView:
    base = ClusterView(
        node_id="n1",
        leader=True,
        has_quorum=True,
        voters=frozenset({"n1", "n2", "n3"}),
        learners=frozenset({"n4"}),
        health={"n1": OK, "n2": OK, "n3": OK, "n4": OK},
        match={"n1": 50, "n2": 50, "n3": 50, "n4": 50},
        commit_index=50,
        last_index=50,
        desired_voters=3,
        now=NOW,
    )
    return replace(base, **changes)
