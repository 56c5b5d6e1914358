"""The latest Raft snapshot as one self-checking file, replaced atomically.

A new snapshot goes to a temporary file that is fsynced, renamed over the old one and made durable
by an fsync of the directory, so a crash at any moment leaves either the old or the new snapshot.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from caddy.raft.types import Membership, SnapshotMeta
from caddy.storage.errors import StorageError

MAGIC = b"CADDYSNP"
# Synced a piece at a time: one fsync of a large file holds the disk for tens of milliseconds,
# and every log fsync of the node (and of any node sharing the disk) waits behind it.
SYNC_EVERY_BYTES = 2 << 20
# magic, length of the JSON header, CRC32 of the JSON header
PREFIX = struct.Struct(f"<{len(MAGIC)}sII")


def fsync_directory(directory: Path) -> None:
    """Make a rename or a file creation in `directory` durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class SnapshotFile:
    """Keeps exactly one snapshot (metadata + opaque data) at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial_path = path.with_name(path.name + ".partial")

    def write(self, meta: SnapshotMeta, data: bytes) -> None:
        """Durably replace the snapshot; returns once the new one survives a crash."""
        header = json.dumps(
            {
                "index": meta.index,
                "term": meta.term,
                "voters": sorted(meta.membership.voters),
                "learners": sorted(meta.membership.learners),
                "witnesses": sorted(meta.membership.witnesses),
                "addresses": dict(meta.membership.addresses),
                "data_length": len(data),
                "data_crc32": zlib.crc32(data),
            },
            sort_keys=True,
        ).encode()
        with open(self.partial_path, "wb") as partial:
            partial.write(PREFIX.pack(MAGIC, len(header), zlib.crc32(header)))
            partial.write(header)
            view = memoryview(data)
            for start in range(0, len(data), SYNC_EVERY_BYTES):
                partial.write(view[start : start + SYNC_EVERY_BYTES])
                partial.flush()
                os.fdatasync(partial.fileno())
            partial.flush()
            os.fsync(partial.fileno())
        os.replace(self.partial_path, self.path)
        fsync_directory(self.path.parent)

    def discard_partial(self) -> bool:
        """Remove what a crash in the middle of `write` left behind; whether there was any."""
        try:
            self.partial_path.unlink()
        except FileNotFoundError:
            return False
        return True

    def read_meta(self) -> SnapshotMeta | None:
        """The snapshot's metadata (its header is checked, its data only for length), or None."""
        try:
            with open(self.path, "rb") as snapshot:
                meta, data_length, _ = self._read_header(snapshot)
                data_start = snapshot.tell()
        except FileNotFoundError:
            return None
        if os.path.getsize(self.path) != data_start + data_length:
            raise StorageError(f"{self.path}: snapshot data is truncated or overlong")
        return meta

    def read(self) -> tuple[SnapshotMeta, bytes] | None:
        """The snapshot with its data, fully checked, or None when there is none."""
        try:
            with open(self.path, "rb") as snapshot:
                meta, data_length, data_crc = self._read_header(snapshot)
                data = snapshot.read(data_length + 1)
        except FileNotFoundError:
            return None
        if len(data) != data_length or zlib.crc32(data) != data_crc:
            raise StorageError(f"{self.path}: snapshot data is corrupt")
        return meta, data

    def _read_header(self, snapshot: BinaryIO) -> tuple[SnapshotMeta, int, int]:
        prefix = snapshot.read(PREFIX.size)
        if len(prefix) != PREFIX.size:
            raise StorageError(f"{self.path}: snapshot header is truncated")
        magic, header_length, header_crc = PREFIX.unpack(prefix)
        header = snapshot.read(header_length)
        if magic != MAGIC or len(header) != header_length or zlib.crc32(header) != header_crc:
            raise StorageError(f"{self.path}: snapshot header is corrupt")
        fields = json.loads(header)
        membership = Membership(
            voters=frozenset(fields["voters"]),
            learners=frozenset(fields["learners"]),
            witnesses=frozenset(fields["witnesses"]),
            # a snapshot written before members carried addresses has none
            addresses=tuple(sorted(fields.get("addresses", {}).items())),
        )
        meta = SnapshotMeta(index=fields["index"], term=fields["term"], membership=membership)
        return meta, fields["data_length"], fields["data_crc32"]
