"""Durable log write speed: SqliteLogStorage against a raw length+CRC append file with fdatasync.

The raw file is the floor any hand-written log format would pay; prints one JSON line.
Usage: python bench/storage.py [--dir DIR] [--syncs N] [--payload BYTES]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from caddy.raft.types import Entry  # noqa: E402
from caddy.storage import SqliteLogStorage  # noqa: E402

RECORD_HEADER = struct.Struct("<IIqqB")  # length, crc32, index, term, kind


class RawFsyncFile:
    """Baseline: every record length-prefixed and CRC-checked, appended, fdatasync per batch."""

    def __init__(self, directory: Path) -> None:
        self.descriptor = os.open(directory / "raw.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def append(self, entries: list[Entry]) -> None:
        records = []
        for entry in entries:
            body = struct.pack("<qqB", entry.index, entry.term, int(entry.kind)) + entry.data
            records.append(struct.pack("<II", len(body), zlib.crc32(body)) + body)
        os.write(self.descriptor, b"".join(records))

    def sync(self) -> None:
        os.fdatasync(self.descriptor)

    def close(self) -> None:
        os.close(self.descriptor)


def run(
    open_log: Callable[[Path], RawFsyncFile | SqliteLogStorage],
    base: Path,
    batch: int,
    syncs: int,
    payload: bytes,
) -> dict[str, float]:
    """Append `batch` entries then sync, `syncs` times; the latency is append+sync of a batch."""
    directory = Path(tempfile.mkdtemp(dir=base))
    log = open_log(directory)
    latencies = []
    index = 0
    started = time.perf_counter()
    for _ in range(syncs):
        entries = [Entry(index=index + k + 1, term=1, data=payload) for k in range(batch)]
        index += batch
        before = time.perf_counter()
        log.append(entries)
        log.sync()
        latencies.append(time.perf_counter() - before)
    elapsed = time.perf_counter() - started
    log.close()
    latencies.sort()
    return {
        "entries_per_s": round(index / elapsed),
        "sync_p50_us": round(statistics.median(latencies) * 1e6, 1),
        "sync_p99_us": round(latencies[int(len(latencies) * 0.99)] * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a tmp dir)"
    )
    parser.add_argument("--syncs", type=int, default=2000, help="syncs per run")
    parser.add_argument("--payload", type=int, default=100, help="bytes per entry")
    arguments = parser.parse_args()
    payload = os.urandom(arguments.payload)
    engines: dict[str, Callable[[Path], RawFsyncFile | SqliteLogStorage]] = {
        "raw_fsync_file": RawFsyncFile,
        "sqlite": lambda directory: SqliteLogStorage(directory, node_id="bench", cluster="bench"),
    }
    with tempfile.TemporaryDirectory(dir=arguments.dir) as base:
        results = {
            name: {
                f"batch_{batch}": run(open_log, Path(base), batch, arguments.syncs, payload)
                for batch in (1, 64)
            }
            for name, open_log in engines.items()
        }
    ratios = {
        f"sqlite_vs_raw_{batch}_entries_per_s": round(
            results["sqlite"][batch]["entries_per_s"]
            / results["raw_fsync_file"][batch]["entries_per_s"],
            2,
        )
        for batch in ("batch_1", "batch_64")
    }
    print(
        json.dumps(
            {
                "bench": "storage",
                "results": results,
                "ratios": ratios,
                "settings": {"syncs": arguments.syncs, "payload_bytes": arguments.payload},
                "machine": {
                    "python": platform.python_version(),
                    "sqlite": sqlite3.sqlite_version,
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                },
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
