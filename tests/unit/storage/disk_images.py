"""What a crash leaves on disk: the bytes of a storage directory, copied while the log is open.

Copying without closing captures exactly what the files hold at that moment, as a power cut would.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from caddy.storage import SqliteLogStorage
from caddy.storage.sqlite_log import DATABASE_NAME

WAL_NAME = DATABASE_NAME + "-wal"
NODE_ID = "n1"
CLUSTER = "test"


def open_log(directory: Path) -> SqliteLogStorage:
    return SqliteLogStorage(directory, node_id=NODE_ID, cluster=CLUSTER)


def take_image(directory: Path) -> dict[str, bytes]:
    """Every file of the data dir (the lock file aside) as it is now."""
    return {
        path.name: path.read_bytes()
        for path in directory.iterdir()
        if path.is_file() and not path.name.endswith(".lock")
    }


def write_image(image: dict[str, bytes], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in image.items():
        (directory / name).write_bytes(content)


@contextmanager
def scratch_dirs() -> Iterator[Path]:
    """A parent for many short-lived data dirs, in memory when the OS offers it (fast fsync)."""
    in_memory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=in_memory) as parent:
        yield Path(parent)
