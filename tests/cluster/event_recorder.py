"""A node process whose program subscribes to its own events, as a user's program would: one
callback writes each event as a JSON line to a file, another raises on every event.

Usage: python -m tests.cluster.event_recorder TOPOLOGY NODE_ID EVENTS_FILE
"""

from __future__ import annotations

import json
import signal
import sys
import threading

import pykka

from actors.manager import ClusterManager
from caddy.config import load_topology


def main(topology: str, node_id: str, events_file: str) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    node = ClusterManager(node_id, load_topology(topology))
    with open(events_file, "a", buffering=1) as out:

        def record(event) -> None:
            out.write(json.dumps(event.to_dict()) + "\n")

        def broken(event) -> None:
            raise RuntimeError(f"a user's callback failed on {event.kind}")

        node.subscribe(broken)  # before `record`: its failures must not stop the next callback
        node.subscribe(record)
        node.start()
        try:
            while not stop.wait(0.2):
                if node.failed_actors():
                    return 1
        finally:
            node.stop(graceful=False)
            pykka.ActorRegistry.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
