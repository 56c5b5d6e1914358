"""What the failover and reconfiguration tests on real nodes share: fast health checks, a
cluster of three voters and a learner, and the "everyone judged healthy" wait."""

from __future__ import annotations

from typing import Any

from caddy.client import Client
from tests.harness import LocalCluster, started_cluster

FAST_CHECKS = {"failure_threshold": 3, "health_check_interval_ms": 200}


def with_learner(tmp_path, processes, **failover: Any) -> LocalCluster:
    """n1..n3 voters and learner n4, checking health every 200 ms, `failover` settings added."""
    return started_cluster(
        tmp_path,
        processes,
        4,
        roles=["voter", "voter", "voter", "learner"],
        failover={**FAST_CHECKS, **failover},
    )


def all_healthy(client: Client, judge: str) -> bool:
    return set(client.status(judge)["failover"]["health"].values()) == {"healthy"}
