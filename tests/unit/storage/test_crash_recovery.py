"""After a crash the log recovers exactly a synced prefix: never garbage, never a partial write.

A crash is simulated by copying the data dir's files while the log is open (what the disk holds),
then cutting the WAL at every byte of its last transactions or flipping bytes in them.
"""

from __future__ import annotations

import bisect
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from caddy.raft.types import Entry, HardState, Membership, SnapshotMeta
from caddy.storage import StorageError
from caddy.storage.sqlite_log import DATABASE_NAME
from tests.unit.storage.disk_images import (
    WAL_NAME,
    open_log,
    scratch_dirs,
    take_image,
    write_image,
)

WAL_HEADER_SIZE = 32
WAL_FRAME_HEADER_SIZE = 24


@dataclass(frozen=True, slots=True)
class Synced:
    """What one sync made durable, and how long the WAL was right after it."""

    wal_size: int
    entries: tuple[Entry, ...]
    hard_state: HardState


def recovered(image: dict[str, bytes], directory: Path) -> tuple[tuple[Entry, ...], HardState]:
    write_image(image, directory)
    log = open_log(directory)
    try:
        state = log.load()
    finally:
        log.close()
    return tuple(state.entries), state.hard_state


def write_history(directory: Path, rng: random.Random) -> list[Synced]:
    """Appends (some replacing a suffix) each followed by a sync; the last three are one entry
    each, the middle one large enough to span two WAL frames."""
    log = open_log(directory)
    entries: list[Entry] = []
    hard_state = HardState()
    history = []

    def append(first: int, sizes: list[int], term: int) -> None:
        batch = [
            Entry(index=first + k, term=term, data=rng.randbytes(size))
            for k, size in enumerate(sizes)
        ]
        log.append(batch)
        entries[first - 1 :] = batch
        log.sync()
        size = (directory / WAL_NAME).stat().st_size
        history.append(Synced(size, tuple(entries), hard_state))

    append(1, [], term=1)
    for step in range(12):
        term = 1 + step // 4
        first = len(entries) + 1
        if entries and step % 5 == 4:
            first = max(1, len(entries) - rng.randint(0, 3))  # replace a suffix
        if step % 3 == 0:
            hard_state = HardState(term=term, vote=f"n{step % 3 + 1}", commit=len(entries) - 1)
            log.set_hard_state(hard_state)
        append(first, [rng.randint(1, 300) for _ in range(rng.randint(1, 6))], term)
    for size in (40, 5000, 40):
        append(len(entries) + 1, [size], term=4)
    # What a crash leaves: nothing checkpointed since the log was created, all of it in the WAL.
    assert history[-1].wal_size > history[-4].wal_size > history[0].wal_size
    return history


def expected_at(history: list[Synced], wal_length: int) -> Synced:
    """The last sync whose WAL frames all lie within the first `wal_length` bytes."""
    sizes = [synced.wal_size for synced in history]
    return history[bisect.bisect_right(sizes, wal_length) - 1]


@pytest.fixture(scope="module")
def history_image() -> tuple[list[Synced], dict[str, bytes]]:
    with scratch_dirs() as parent:
        history = write_history(parent / "original", random.Random(2024))
        image = take_image(parent / "original")
    assert len(image[WAL_NAME]) == history[-1].wal_size
    return history, image


def frame_starts(wal: bytes, from_offset: int) -> list[int]:
    """Offsets of the WAL frames that begin at or after `from_offset`."""
    (page_size,) = struct.unpack(">I", wal[8:12])
    frame_size = WAL_FRAME_HEADER_SIZE + page_size
    first = -(-(from_offset - WAL_HEADER_SIZE) // frame_size)
    return list(range(WAL_HEADER_SIZE + first * frame_size, len(wal), frame_size))


def test_wal_cut_at_every_byte_of_the_last_transactions(history_image) -> None:
    """Every byte of the last three transactions (one spans several frames), and around every
    frame boundary of the whole history."""
    history, image = history_image
    wal = image[WAL_NAME]
    tail_start = history[-4].wal_size
    assert len(frame_starts(wal, tail_start)) >= 4
    cuts = set(range(tail_start, len(wal) + 1))
    for boundary in frame_starts(wal, history[0].wal_size):
        cuts |= {boundary - 1, boundary, boundary + 1}
    seen = set()
    with scratch_dirs() as parent:
        for cut in sorted(cut for cut in cuts if cut >= history[0].wal_size):
            expected = expected_at(history, cut)
            entries, hard_state = recovered({**image, WAL_NAME: wal[:cut]}, parent / str(cut))
            assert (entries, hard_state) == (expected.entries, expected.hard_state), cut
            seen.add(expected)
    assert seen == set(history)


def test_flipped_bytes_in_any_frame_cut_the_log_before_it(history_image) -> None:
    """Every byte of each frame header and a sample of its page, one at a time."""
    history, image = history_image
    wal = image[WAL_NAME]
    (page_size,) = struct.unpack(">I", wal[8:12])
    rng = random.Random(99)
    with scratch_dirs() as parent:
        for frame_start in frame_starts(wal, history[0].wal_size):
            expected = expected_at(history, frame_start)
            offsets = list(range(WAL_FRAME_HEADER_SIZE))
            offsets += rng.sample(
                range(WAL_FRAME_HEADER_SIZE, WAL_FRAME_HEADER_SIZE + page_size), 8
            )
            for offset in offsets:
                damaged = bytearray(wal)
                damaged[frame_start + offset] ^= rng.randint(1, 255)
                entries, hard_state = recovered(
                    {**image, WAL_NAME: bytes(damaged)}, parent / f"{frame_start + offset}"
                )
                assert (entries, hard_state) == (expected.entries, expected.hard_state), (
                    frame_start,
                    offset,
                )


@pytest.mark.parametrize("seed", range(3))
def test_crash_at_random_moments_recovers_the_last_sync(seed: int) -> None:
    """Random appends, truncations, compactions, snapshots; a crash image recovers the synced."""
    rng = random.Random(seed)
    with scratch_dirs() as parent:
        directory = parent / "log"
        log = open_log(directory)
        entries: dict[int, Entry] = {}
        hard_state = HardState()
        snapshot = (0, b"")
        synced = (dict(entries), hard_state, snapshot)
        crashes = 0
        for step in range(300):
            last = max(entries, default=snapshot[0])
            action = rng.random()
            if action < 0.55:
                first = rng.randint(max(min(entries, default=last + 1), last - 3), last + 1)
                first = max(first, snapshot[0] + 1)
                batch = [
                    Entry(index=first + k, term=step, data=rng.randbytes(rng.randint(0, 200)))
                    for k in range(rng.randint(1, 8))
                ]
                log.append(batch)
                entries = {i: e for i, e in entries.items() if i < first}
                entries.update((entry.index, entry) for entry in batch)
            elif action < 0.65:
                hard_state = HardState(term=step, vote=rng.choice([None, "n2"]), commit=last)
                log.set_hard_state(hard_state)
            elif action < 0.72 and entries:
                through = rng.randint(min(entries), last)
                log.compact(through)
                entries = {i: e for i, e in entries.items() if i > through}
            elif action < 0.76:
                if entries and rng.random() < 0.7:  # taken locally: the log agrees with it
                    index = rng.randint(min(entries), last)
                    term = entries[index].term
                else:  # a leader's, which the log does not have
                    index, term = rng.randint(snapshot[0] + 1, last + 5), 10_000 + step
                snapshot = (index, rng.randbytes(rng.randint(0, 5000)))
                log.save_snapshot(SnapshotMeta(index=index, term=term), snapshot[1])
                if index in entries and entries[index].term == term:
                    entries = {i: e for i, e in entries.items() if i > index}
                else:
                    entries = {}
                synced = (dict(entries), hard_state, snapshot)
            elif action < 0.95:
                log.sync()
                synced = (dict(entries), hard_state, snapshot)
            else:
                crashes += 1
                crashed = parent / f"crash-{step}"
                write_image(take_image(directory), crashed)
                after_crash = open_log(crashed)
                state = after_crash.load()
                after_crash.close()
                synced_entries, synced_hard_state, (snapshot_index, snapshot_data) = synced
                assert state.hard_state == synced_hard_state
                assert (state.snapshot.index if state.snapshot else 0) == snapshot_index
                assert (state.snapshot_data or b"") == snapshot_data
                assert state.entries == [synced_entries[i] for i in sorted(synced_entries)]
        log.close()
    assert crashes >= 5


def test_corrupt_entry_inside_the_database_is_an_error(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append([Entry(index=i, term=1, data=b"MARKER-%04d" % i * 8) for i in range(1, 200)])
    log.close()  # checkpoints: the entries now live in the database file itself
    database = bytearray((tmp_path / DATABASE_NAME).read_bytes())
    position = database.index(b"MARKER-0100")
    database[position + 8] ^= 0x01
    (tmp_path / DATABASE_NAME).write_bytes(database)
    log = open_log(tmp_path)
    with pytest.raises(StorageError, match="entry 100 is corrupt"):
        log.load()
    log.close()


def test_truncated_database_file_is_an_error(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append([Entry(index=i, term=1, data=bytes(300)) for i in range(1, 200)])
    log.close()
    database = (tmp_path / DATABASE_NAME).read_bytes()
    (tmp_path / DATABASE_NAME).write_bytes(database[: len(database) // 2])
    with pytest.raises(StorageError):
        open_log(tmp_path).load()


def test_corrupt_snapshot_file_is_an_error(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.save_snapshot(SnapshotMeta(index=3, term=1, membership=Membership()), b"x" * 5000)
    log.close()
    snapshot = tmp_path / "snapshot.bin"
    damaged = bytearray(snapshot.read_bytes())
    damaged[-100] ^= 0x40
    snapshot.write_bytes(damaged)
    log = open_log(tmp_path)
    with pytest.raises(StorageError, match="snapshot data is corrupt"):
        log.load()
    log.close()
    snapshot.write_bytes(bytes(damaged[:-1]))
    with pytest.raises(StorageError, match="truncated"):
        open_log(tmp_path)
