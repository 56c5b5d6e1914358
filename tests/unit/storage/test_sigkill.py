"""A process SIGKILLed while appending loses nothing it had synced, round after round."""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from caddy.raft.types import Entry, HardState
from tests.unit.storage.disk_images import open_log

REPOSITORY = Path(__file__).resolve().parents[3]
DEADLINE_SECONDS = 30.0

# Appends batches after whatever survived, syncs, then prints the last synced index.
WRITER = """
import sys
from pathlib import Path
from caddy.raft.types import Entry, HardState
from tests.unit.storage.disk_images import open_log

log = open_log(Path(sys.argv[1]))
last = max((entry.index for entry in log.load().entries), default=0)
batch_size = 1
while True:
    indexes = range(last + 1, last + batch_size + 1)
    batch = [Entry(index=i, term=1, data=b"%d" % i * 9) for i in indexes]
    log.append(batch)
    last = batch[-1].index
    log.set_hard_state(HardState(term=1, vote="n1", commit=last))
    log.sync()
    print(last, flush=True)
    batch_size = batch_size % 7 + 1
"""


def expected_entry(index: int) -> Entry:
    return Entry(index=index, term=1, data=b"%d" % index * 9)


def run_until_killed(directory: Path, kill_after_lines: int) -> list[int]:
    """Start the writer, SIGKILL it once it has reported enough syncs; every index it printed."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory)],
        stdout=subprocess.PIPE,
        cwd=REPOSITORY,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
    )
    output = b""
    deadline = time.monotonic() + DEADLINE_SECONDS
    with selectors.DefaultSelector() as selector:
        selector.register(writer.stdout, selectors.EVENT_READ)
        while output.count(b"\n") < kill_after_lines:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"writer reported only {len(output.splitlines())} syncs in time"
            if selector.select(timeout=remaining):
                chunk = os.read(writer.stdout.fileno(), 65536)
                assert chunk, f"writer exited early with {writer.wait()}"
                output += chunk
    writer.send_signal(signal.SIGKILL)
    output += writer.stdout.read()  # what it printed before dying: all of it was synced
    writer.stdout.close()
    assert writer.wait(timeout=DEADLINE_SECONDS) == -signal.SIGKILL
    return [int(line) for line in output.splitlines() if line.strip()]


def test_every_synced_index_survives_sigkill(tmp_path: Path) -> None:
    rng = random.Random(5)
    for _ in range(8):
        reported = run_until_killed(tmp_path, kill_after_lines=rng.randint(30, 300))
        log = open_log(tmp_path)
        state = log.load()
        log.close()
        assert reported, "the writer reported no sync"
        assert state.entries[-1].index >= reported[-1]
        assert state.entries == [expected_entry(i) for i in range(1, len(state.entries) + 1)]
        # Entries and hard state are written in one transaction: they survive together.
        assert state.hard_state == HardState(term=1, vote="n1", commit=state.entries[-1].index)
