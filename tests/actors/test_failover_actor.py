"""The FailoverActor in one process, with stand-ins for the Raft actor and the transport: the
node's own check of its Raft thread, and the verdicts it posts and announces."""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka
import pytest

from actors.events import EventBus
from actors.failover_actor import FailoverActor
from actors.status_board import StatusBoard
from actors.ticker import Tick
from caddy.config import parse_topology
from tests.harness import wait_until


class SlowRaft(pykka.ThreadingActor):
    """Answers pings at once until `stall` is set, then after `stall_s`; reports `sync_s` as
    the slowest fsync while `slow_disk` is set."""

    def __init__(self, stall_s: float) -> None:
        super().__init__()
        self.stall = threading.Event()
        self.stall_s = stall_s
        self.slow_disk = threading.Event()

    def ping(self) -> float:
        if self.stall.is_set():
            time.sleep(self.stall_s)
        return 2.5 if self.slow_disk.is_set() else 0.001

    def disk(self) -> threading.Event:
        return self.slow_disk

    def stalled(self) -> threading.Event:
        return self.stall


class NoPeers:
    def peer_stats(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def config():
    return parse_topology(
        {
            "cluster": "c",
            "nodes": [{"id": "n1", "address": "tcp://127.0.0.1:7101"}],
            "failover": {
                "failure_threshold": 2,
                "health_check_interval_ms": 100,
                "max_raft_lag_ms": 50,
            },
        }
    )


def test_a_raft_thread_that_stops_answering_or_a_slow_fsync_fails_the_own_check(config) -> None:
    raft = SlowRaft.start(0.3)
    bus = EventBus("n1")
    board = StatusBoard()
    seen: list[Any] = []
    bus.subscribe(seen.append, kinds=["member.failed", "member.recovered"])
    failover = FailoverActor.start(config, "n1", NoPeers(), board, bus, raft=raft, gossip=None)
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            failover.tell(Tick())
            time.sleep(0.02)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        section = lambda: board.document()["failover"]  # noqa: E731
        wait_until(lambda: section()["health"]["n1"] == "healthy", 10, "n1 healthy")
        raft.proxy().stalled().get().set()
        wait_until(lambda: section()["health"]["n1"] == "failed", 10, "n1 failed")
        assert (
            "check _raft_thread: RaftThreadLagging: no answer within 50 ms"
            in (section()["reasons"]["n1"])
        )
        raft.proxy().stalled().get().clear()
        wait_until(lambda: section()["health"]["n1"] == "healthy", 10, "n1 healthy again")
        raft.proxy().disk().get().set()
        wait_until(lambda: section()["health"]["n1"] == "failed", 10, "n1 failed on its disk")
        assert (
            "SlowDisk: an fsync of the log took 2500 ms (at most 1000 ms)"
            in (section()["reasons"]["n1"])
        )
        raft.proxy().disk().get().clear()
        wait_until(lambda: section()["health"]["n1"] == "healthy", 10, "n1 healthy once more")
        kinds = wait_until(
            lambda: [e.kind for e in seen] if len(seen) >= 2 else None, 10, "both events"
        )
        assert kinds[:2] == ["member.failed", "member.recovered"]
    finally:
        stop.set()
        ticker.join(5)
        failover.stop()
        raft.stop()
        bus.close()
