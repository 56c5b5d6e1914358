"""A process that only sleeps, 5 ms at a time, and reports when it woke late: how long the
machine kept a process that wanted the CPU from running (a fuzz run's attacker shares the
nodes' cores; its floods' kernel work is not lowered by `nice`).

`python -m tests.fuzz.stall_probe SECONDS` prints one JSON line when SECONDS have passed or
it is terminated: the longest stall and every stall over `REPORTED_MS`, in ms, with when.
"""

from __future__ import annotations

import json
import signal
import sys
import time

NAP_S = 0.005
REPORTED_MS = 50


def main(seconds: float) -> None:
    stalls: list[tuple[float, float]] = []
    longest = 0.0
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    start = last = time.monotonic()
    while not stopping and last - start < seconds:
        time.sleep(NAP_S)
        now = time.monotonic()
        late_ms = (now - last - NAP_S) * 1000
        longest = max(longest, late_ms)
        if late_ms > REPORTED_MS:
            stalls.append((round(now - start, 2), round(late_ms)))
        last = now
    print(json.dumps({"longest_stall_ms": round(longest), "stalls_ms": stalls}), flush=True)


if __name__ == "__main__":
    main(float(sys.argv[1]))
