"""A lock holder in a process of its own, for the fencing scenario: it takes the lock, prints
its token, and waits for a line on stdin (the test pauses it meanwhile, past its lease); then it
writes through the cluster (fenced by its lock) and through a SQLite resource (checked by
`SqliteFence`), releases, and prints what each said as one JSON line.

Usage: python -m tests.cluster.lock_holder TOPOLOGY DATABASE LOCK_NAME TTL_SECONDS
"""

import json
import sqlite3
import sys

from caddy.client import Client
from caddy.errors import FencedOut, LockLost
from caddy.fencing import StaleToken
from caddy.fencing_sqlite import SqliteFence


def main(topology: str, database: str, name: str, ttl: float) -> None:
    with Client(topology, timeout=10) as client:
        lock = client.lock(name, ttl=ttl, wait=10)
        print(json.dumps({"token": lock.token}), flush=True)
        sys.stdin.readline()
        outcome = {"held": lock.held()}
        try:
            client.put("report", "old holder", fence=lock)
            outcome["kv"] = "applied"
        except FencedOut:
            outcome["kv"] = "fenced_out"
        conn = sqlite3.connect(database)
        try:
            with conn:
                SqliteFence().check(conn, name, lock.token)
                conn.execute("INSERT INTO reports VALUES (?)", ("old holder",))
            outcome["resource"] = "applied"
        except StaleToken:
            outcome["resource"] = "stale"
        try:
            lock.release()
            outcome["release"] = "released"
        except LockLost:
            outcome["release"] = "lost"
        print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
