"""Committed entries per second through three in-memory Raft cores (no I/O): the core's own cost.

Prints one JSON line: batched (propose_many) and unbatched (propose + full round each) figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sys
import time
from collections import deque

from caddy.raft.node import RaftNode
from caddy.raft.ready import StateRole
from caddy.raft.storage_api import RecoveredState
from caddy.raft.types import HardState, Membership

NODE_IDS = ("n1", "n2", "n3")


class Bench:
    """Three cores wired directly: every Ready is 'persisted' instantly and delivered in order."""

    def __init__(self, max_append_entries: int) -> None:
        membership = Membership(frozenset(NODE_IDS))
        empty = RecoveredState(HardState(), None, None, [])
        self.nodes = {
            node_id: RaftNode(
                node_id,
                membership,
                storage_state=empty,
                rng=random.Random(node_id),
                heartbeat_ticks=1,
                election_ticks_min=10,
                election_ticks_max=20,
                max_append_entries=max_append_entries,
                snapshot_threshold=1 << 62,
            )
            for node_id in NODE_IDS
        }
        self.queue: deque = deque()
        self.applied = dict.fromkeys(NODE_IDS, 0)
        self.nodes["n1"].campaign()
        self.pump()
        assert self.nodes["n1"].state is StateRole.LEADER

    def pump(self) -> None:
        """Run every node's Ready and deliver every message until the cluster is quiet."""
        nodes, queue, applied = self.nodes, self.queue, self.applied
        while True:
            for node_id, node in nodes.items():
                while node.has_ready():
                    ready = node.ready()
                    queue.extend(ready.messages)
                    applied[node_id] += len(ready.committed_entries)
                    node.advance(ready)
            if not queue:
                return
            while queue:
                to, message = queue.popleft()
                nodes[to].step(message)


def run_batched(total: int, batch: int, max_append_entries: int) -> float:
    bench = Bench(max_append_entries)
    leader = bench.nodes["n1"]
    commands = [b"x" * 16] * batch
    start_applied = min(bench.applied.values())
    started = time.perf_counter()
    for _ in range(total // batch):
        leader.propose_many(commands)
        bench.pump()
    elapsed = time.perf_counter() - started
    assert min(bench.applied.values()) - start_applied == total // batch * batch
    return total // batch * batch / elapsed


def run_unbatched(total: int, max_append_entries: int) -> float:
    bench = Bench(max_append_entries)
    leader = bench.nodes["n1"]
    start_applied = min(bench.applied.values())
    started = time.perf_counter()
    for _ in range(total):
        leader.propose(b"x" * 16)
        bench.pump()
    elapsed = time.perf_counter() - started
    assert min(bench.applied.values()) - start_applied == total
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--unbatched-entries", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--max-append-entries", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    args = parser.parse_args()
    batched = max(
        run_batched(args.entries, args.batch, args.max_append_entries) for _ in range(args.repeat)
    )
    unbatched = max(
        run_unbatched(args.unbatched_entries, args.max_append_entries) for _ in range(args.repeat)
    )
    print(
        json.dumps(
            {
                "bench": "raft_core",
                "batched_entries_per_s": round(batched),
                "unbatched_entries_per_s": round(unbatched),
                "settings": {
                    "nodes": len(NODE_IDS),
                    "entries": args.entries,
                    "unbatched_entries": args.unbatched_entries,
                    "batch": args.batch,
                    "payload_bytes": 16,
                    "max_append_entries": args.max_append_entries,
                    "repeat": args.repeat,
                    "io": "none (Ready handled in memory, messages delivered in process)",
                },
                "machine": {
                    "platform": platform.platform(),
                    "python": sys.version.split()[0],
                    "implementation": platform.python_implementation(),
                    "cpu_count": os.cpu_count(),
                },
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
