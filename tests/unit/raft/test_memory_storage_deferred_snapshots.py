"""MemoryLogStorage's own snapshots written apart from the log: `write_snapshot` is durable at
once, `cut_log_to_snapshot` at the next sync, and a crash in between is completed on load, as
the SQLite storage does (the last test runs the same histories against both)."""

from __future__ import annotations

from pathlib import Path

import pytest

from caddy.raft.memory_storage import MemoryLogStorage
from caddy.raft.storage_api import RecoveredState
from caddy.raft.types import Entry, HardState, Membership, SnapshotMeta
from caddy.storage import SqliteLogStorage
from tests.unit.storage.disk_images import open_log, take_image, write_image

MEMBERSHIP = Membership(voters=frozenset({"n1", "n2", "n3"}))
SIX = SnapshotMeta(index=6, term=1, membership=MEMBERSHIP)


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(index=i, term=term, data=b"entry %d" % i) for i in range(first, last + 1)]


def indexes(state: RecoveredState) -> list[tuple[int, int]]:
    return [(entry.index, entry.term) for entry in state.entries]


def synced_log(last: int = 10) -> MemoryLogStorage:
    storage = MemoryLogStorage()
    storage.append(entries(1, last))
    storage.set_hard_state(HardState(term=1, vote="n1", commit=last))
    storage.sync()
    return storage


def test_a_written_snapshot_cut_and_synced_survives_a_crash() -> None:
    storage = synced_log()
    storage.write_snapshot(SIX, b"six")
    storage.cut_log_to_snapshot(SIX)
    storage.sync()
    storage.crash()
    state = storage.load()
    assert (state.snapshot, state.snapshot_data) == (SIX, b"six")
    assert state.entries == entries(7, 10)
    assert state.hard_state == HardState(term=1, vote="n1", commit=10)


def test_a_crash_before_the_cut_fits_the_log_to_the_written_snapshot() -> None:
    storage = synced_log()
    storage.write_snapshot(SIX, b"six")
    assert storage.unsynced_writes == 0  # the file is durable, the log untouched
    assert storage.stored_term(3) == 1
    assert storage.durable_state().entries == entries(7, 10)  # what the crash below leaves
    storage.crash()
    state = storage.load()
    assert (state.snapshot, state.snapshot_data) == (SIX, b"six")
    assert state.entries == entries(7, 10)
    assert storage.stored_term(6) is None  # the cut was made for good, not just for `load`
    storage.append(entries(11, 11))
    storage.sync()
    assert storage.load().entries == entries(7, 11)


@pytest.mark.parametrize("keep_unsynced", [0, 1])
def test_a_cut_lost_in_a_crash_is_completed_on_load(keep_unsynced: int) -> None:
    storage = synced_log()
    storage.write_snapshot(SIX, b"six")
    storage.cut_log_to_snapshot(SIX)
    assert storage.unsynced_writes == 1
    storage.crash(keep_unsynced)
    state = storage.load()
    assert state.snapshot == SIX and state.entries == entries(7, 10)


def test_cutting_to_a_snapshot_a_newer_one_overtook_changes_nothing() -> None:
    storage = synced_log()
    older = SnapshotMeta(index=4, term=1, membership=MEMBERSHIP)
    newer = SnapshotMeta(index=8, term=1, membership=MEMBERSHIP)
    storage.write_snapshot(older, b"four")
    storage.save_snapshot(newer, b"eight")
    storage.sync()
    storage.cut_log_to_snapshot(older)
    assert storage.unsynced_writes == 0
    with pytest.raises(ValueError, match="snapshot 8"):
        storage.append(entries(8, 9))
    storage.crash()
    state = storage.load()
    assert (state.snapshot, state.snapshot_data) == (newer, b"eight")
    assert state.entries == entries(9, 10)


@pytest.mark.parametrize("cut", [True, False])
def test_a_snapshot_whose_term_conflicts_at_its_index_drops_the_whole_log(cut: bool) -> None:
    conflicting = SnapshotMeta(index=6, term=2, membership=MEMBERSHIP)
    saved = synced_log()
    saved.save_snapshot(conflicting, b"six")
    assert saved.load().entries == []
    storage = synced_log()
    storage.write_snapshot(conflicting, b"six")
    assert storage.durably_holds(8, 1) is False  # a crash now would drop it
    if cut:
        storage.cut_log_to_snapshot(conflicting)
        assert storage.load() == saved.load()
    storage.crash()
    assert storage.load() == saved.load()
    storage.append(entries(7, 7, term=2))  # the log after the snapshot starts afresh
    storage.sync()
    storage.crash()
    assert indexes(storage.load()) == [(7, 2)]


def test_appends_between_writing_and_cutting_land_in_the_log() -> None:
    storage = synced_log()
    storage.write_snapshot(SIX, b"six")
    storage.append(entries(11, 12))
    storage.append(entries(9, 9, term=2))  # a new leader replaces the uncommitted suffix
    assert [storage.stored_term(i) for i in (6, 8, 9, 10)] == [1, 1, 2, None]
    state = storage.load()  # between the two, too, no entry the snapshot covers comes back
    assert state.snapshot == SIX and indexes(state) == [(7, 1), (8, 1), (9, 2)]
    storage.cut_log_to_snapshot(SIX)
    storage.sync()
    storage.crash()
    assert indexes(storage.load()) == [(7, 1), (8, 1), (9, 2)]
    with pytest.raises(ValueError, match="snapshot 6"):
        storage.append(entries(6, 6))


def test_appends_lost_in_a_crash_before_the_cut_leave_the_synced_log_fitted() -> None:
    storage = synced_log()
    storage.write_snapshot(SIX, b"six")
    storage.append(entries(11, 12))
    storage.cut_log_to_snapshot(SIX)
    storage.crash()
    assert storage.load().entries == entries(7, 10)


def test_durably_holds_what_a_crash_would_leave_across_a_deferred_snapshot() -> None:
    storage = synced_log()
    storage.append(entries(11, 11))
    assert storage.durably_holds(3, 1) and not storage.durably_holds(11, 1)
    storage.write_snapshot(SIX, b"six")
    assert storage.durably_holds(3, 1) and storage.durably_holds(6, 1)  # in the snapshot
    assert storage.durably_holds(8, 1) and not storage.durably_holds(8, 2)
    assert not storage.durably_holds(11, 1)
    storage.cut_log_to_snapshot(SIX)
    assert storage.durably_holds(3, 1) and storage.durably_holds(8, 1)
    storage.sync()
    assert storage.durably_holds(3, 1) and storage.durably_holds(11, 1)


# A history is a list of steps; each "crash" compares what both storages recover.
Step = tuple
FOUR = SnapshotMeta(index=4, term=1, membership=MEMBERSHIP)
EIGHT = SnapshotMeta(index=8, term=1, membership=MEMBERSHIP)
SIX_OF_TERM_2 = SnapshotMeta(index=6, term=2, membership=MEMBERSHIP)
START = [("append", entries(1, 10)), ("hard_state", HardState(1, "n1", 9)), ("sync",)]
HISTORIES = {
    "cut and synced": [*START, ("write", SIX), ("cut", SIX), ("sync",), ("crash",)],
    "crash before the cut": [*START, ("write", SIX), ("crash",)],
    "cut lost": [*START, ("write", SIX), ("cut", SIX), ("crash",)],
    "overtaken": [
        *START,
        ("write", FOUR),
        ("save", EIGHT),
        ("cut", FOUR),
        ("crash",),
        ("append", entries(11, 12)),
        ("sync",),
        ("crash",),
    ],
    "conflicting term": [
        *START,
        ("write", SIX_OF_TERM_2),
        ("crash",),
        ("append", entries(7, 8, term=2)),
        ("sync",),
        ("crash",),
        ("write", EIGHT),
        ("cut", EIGHT),
        ("sync",),
        ("crash",),
    ],
    "appends meanwhile": [
        *START,
        ("write", SIX),
        ("append", entries(11, 12)),
        ("append", entries(9, 9, term=2)),
        ("hard_state", HardState(2, "n2", 8)),
        ("sync",),
        ("crash",),
        ("write", EIGHT),
        ("append", entries(10, 10, term=2)),
        ("cut", EIGHT),
        ("crash",),
    ],
    "two writes, then their cuts": [
        *START,
        ("write", FOUR),
        ("write", SIX),
        ("cut", FOUR),
        ("sync",),
        ("crash",),
        ("cut", SIX),
        ("crash",),
    ],
}


def run(step: Step, storage: MemoryLogStorage | SqliteLogStorage) -> None:
    operation, *arguments = step
    if operation == "append":
        storage.append(*arguments)
    elif operation == "hard_state":
        storage.set_hard_state(*arguments)
    elif operation == "sync":
        storage.sync()
    elif operation == "write":
        storage.write_snapshot(arguments[0], b"data %d" % arguments[0].index)
    elif operation == "save":
        storage.save_snapshot(arguments[0], b"data %d" % arguments[0].index)
    else:
        assert operation == "cut"
        storage.cut_log_to_snapshot(*arguments)


@pytest.mark.parametrize("name", HISTORIES)
def test_memory_and_sqlite_storage_recover_the_same_state(name: str, tmp_path: Path) -> None:
    memory = MemoryLogStorage()
    sqlite = open_log(tmp_path / "0")
    try:
        for number, step in enumerate(HISTORIES[name], start=1):
            if step[0] != "crash":
                run(step, memory)
                run(step, sqlite)
                continue
            # What the disk holds now is what a power cut leaves; recover it in a fresh dir.
            image = take_image(sqlite.directory)
            sqlite.close()
            write_image(image, tmp_path / str(number))
            sqlite = open_log(tmp_path / str(number))
            expected = memory.durable_state()
            memory.crash()
            recovered = sqlite.load()
            assert memory.load() == expected == recovered, f"after step {number}"
            assert all(e.index > recovered.snapshot.index for e in recovered.entries)
    finally:
        sqlite.close()
