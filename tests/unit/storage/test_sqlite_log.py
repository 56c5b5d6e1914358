"""SqliteLogStorage: what is stored comes back after a restart, and unusable dirs are refused."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from caddy.raft.types import Entry, EntryKind, HardState, Membership, SnapshotMeta
from caddy.storage import SqliteLogStorage, StorageError
from caddy.storage.sqlite_log import SNAPSHOT_NAME
from tests.unit.storage.disk_images import CLUSTER, NODE_ID, open_log, take_image, write_image

MEMBERSHIP = Membership(
    voters=frozenset({"n1", "n2"}), learners=frozenset({"n4"}), witnesses=frozenset({"n3"})
)


def entries(first: int, last: int, term: int = 1, tag: bytes = b"") -> list[Entry]:
    return [Entry(index=i, term=term, data=tag + b"entry %d" % i) for i in range(first, last + 1)]


def reopened(log: SqliteLogStorage):
    log.close()
    again = open_log(log.directory)
    try:
        return again.load()
    finally:
        again.close()


def test_fresh_dir_loads_empty(tmp_path: Path) -> None:
    log = open_log(tmp_path / "data")
    state = log.load()
    log.close()
    assert state.hard_state == HardState()
    assert state.snapshot is None and state.snapshot_data is None
    assert state.entries == []


def test_entries_and_hard_state_survive_restart(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    written = [
        Entry(index=1, term=1, kind=EntryKind.NOOP),
        Entry(index=2, term=1, kind=EntryKind.CONFIG, data=b"\x81\xa1v\x01"),
        Entry(index=3, term=2, kind=EntryKind.COMMAND, data=bytes(range(256)) * 40),
    ]
    log.append(written)
    log.set_hard_state(HardState(term=2, vote="n2", commit=2))
    log.sync()
    state = reopened(log)
    assert state.entries == written
    assert state.hard_state == HardState(term=2, vote="n2", commit=2)


def test_hard_state_without_vote_and_later_overwrite(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.set_hard_state(HardState(term=5, vote="n3", commit=0))
    log.set_hard_state(HardState(term=6, vote=None, commit=4))
    assert reopened(log).hard_state == HardState(term=6, vote=None, commit=4)


def test_append_replaces_the_stored_suffix(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(entries(1, 10))
    log.sync()
    replacement = entries(6, 7, term=2, tag=b"new ")
    log.append(replacement)
    log.sync()
    assert log.load().entries == entries(1, 5) + replacement
    log.append(entries(8, 9, term=2))
    assert reopened(log).entries == entries(1, 5) + replacement + entries(8, 9, term=2)


def test_append_rejects_gaps_and_disorder(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(entries(1, 3))
    with pytest.raises(ValueError, match="gap"):
        log.append(entries(5, 6))
    with pytest.raises(ValueError, match="contiguous"):
        log.append([Entry(index=4, term=1), Entry(index=6, term=1)])
    assert log.load().entries == entries(1, 3)
    log.close()


def test_compaction_drops_the_prefix_durably(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(entries(1, 20))
    log.compact(12)
    log.sync()
    assert log.load().entries == entries(13, 20)
    log.append(entries(21, 22))
    assert reopened(log).entries == entries(13, 22)


def test_compacting_everything_then_appending_after_it(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(entries(1, 5))
    log.compact(5)
    log.append(entries(6, 7))
    assert reopened(log).entries == entries(6, 7)


def test_snapshot_replaces_covered_entries_and_keeps_the_rest(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(entries(1, 30))
    log.set_hard_state(HardState(term=1, vote="n1", commit=25))
    meta = SnapshotMeta(index=20, term=1, membership=MEMBERSHIP)
    log.save_snapshot(meta, b"state machine at 20")
    state = reopened(log)
    assert state.snapshot == meta
    assert state.snapshot_data == b"state machine at 20"
    assert state.entries == entries(21, 30)
    assert state.hard_state == HardState(term=1, vote="n1", commit=25)


def test_only_the_latest_snapshot_is_kept(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(entries(1, 10))
    log.save_snapshot(SnapshotMeta(index=4, term=1, membership=MEMBERSHIP), b"four")
    log.save_snapshot(SnapshotMeta(index=8, term=1, membership=MEMBERSHIP), b"eight")
    state = reopened(log)
    assert (state.snapshot.index, state.snapshot_data) == (8, b"eight")
    assert state.entries == entries(9, 10)
    assert sorted(p.name for p in tmp_path.iterdir() if "snapshot" in p.name) == [SNAPSHOT_NAME]


def test_installed_snapshot_beyond_the_log_then_appending(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(entries(1, 3))
    log.save_snapshot(SnapshotMeta(index=50, term=4, membership=MEMBERSHIP), b"from leader")
    with pytest.raises(ValueError, match="snapshot"):
        log.append(entries(50, 51, term=4))
    log.append(entries(51, 52, term=4))
    state = reopened(log)
    assert state.snapshot.index == 50
    assert state.entries == entries(51, 52, term=4)


def test_snapshot_the_log_disagrees_with_discards_the_whole_log(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(entries(1, 10, term=2))
    log.save_snapshot(SnapshotMeta(index=6, term=3, membership=MEMBERSHIP), b"leader's")
    log.append(entries(7, 8, term=3))
    state = reopened(log)
    assert state.snapshot.index == 6
    assert state.entries == entries(7, 8, term=3)


def test_large_snapshot_round_trips(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(24 * 1024 * 1024)
    log = open_log(tmp_path)
    log.save_snapshot(SnapshotMeta(index=1, term=1, membership=MEMBERSHIP), data)
    state = reopened(log)
    assert state.snapshot_data == data


def test_crash_before_the_snapshot_rename_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(tmp_path)
    log.append(entries(1, 10))
    log.save_snapshot(SnapshotMeta(index=3, term=1, membership=MEMBERSHIP), b"three")

    def crash(*_: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        log.save_snapshot(SnapshotMeta(index=9, term=1, membership=MEMBERSHIP), b"nine" * 1000)
    monkeypatch.undo()
    assert (tmp_path / (SNAPSHOT_NAME + ".partial")).exists()
    state = reopened(log)
    assert (state.snapshot.index, state.snapshot_data) == (3, b"three")
    assert state.entries == entries(4, 10)
    assert not (tmp_path / (SNAPSHOT_NAME + ".partial")).exists()


def crash_after_snapshot_rename(tmp_path: Path, log_term: int, meta: SnapshotMeta, data: bytes):
    """A log of entries 1-10 that crashed after the snapshot file was renamed into place but
    before the log was cut: the new snapshot file beside the log as it was. Returns it open."""
    log = open_log(tmp_path)
    log.append(entries(1, 10, term=log_term))
    log.sync()
    before_snapshot = take_image(tmp_path)
    log.save_snapshot(meta, data)
    log.close()
    crashed = tmp_path / "crashed"
    write_image(before_snapshot, crashed)
    (crashed / SNAPSHOT_NAME).write_bytes((tmp_path / SNAPSHOT_NAME).read_bytes())
    return open_log(crashed)


def test_crash_between_snapshot_and_compaction_loads_consistently(tmp_path: Path) -> None:
    meta = SnapshotMeta(index=6, term=1, membership=MEMBERSHIP)
    log = crash_after_snapshot_rename(tmp_path, 1, meta, b"six")
    state = log.load()
    assert (state.snapshot.index, state.snapshot_data) == (6, b"six")
    assert state.entries == entries(7, 10)
    log.append(entries(11, 11))
    assert reopened(log).entries == entries(7, 11)


def test_crash_while_installing_a_conflicting_snapshot_discards_the_log(tmp_path: Path) -> None:
    meta = SnapshotMeta(index=6, term=3, membership=MEMBERSHIP)
    log = crash_after_snapshot_rename(tmp_path, 2, meta, b"leader's")
    state = log.load()
    log.close()
    assert (state.snapshot.index, state.snapshot.term) == (6, 3)
    assert state.entries == []


def test_a_lost_snapshot_file_is_an_error(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(entries(1, 10))
    log.save_snapshot(SnapshotMeta(index=6, term=1, membership=MEMBERSHIP), b"six")
    log.close()
    (tmp_path / SNAPSHOT_NAME).unlink()
    with pytest.raises(StorageError, match="missing"):
        open_log(tmp_path)


def test_close_syncs_pending_writes_and_is_idempotent(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(entries(1, 2))
    log.close()
    log.close()
    again = open_log(tmp_path)
    assert again.load().entries == entries(1, 2)
    again.close()


def test_another_nodes_data_dir_is_refused(tmp_path: Path) -> None:
    open_log(tmp_path).close()
    with pytest.raises(StorageError, match="belongs to node 'n1' of cluster 'test'"):
        SqliteLogStorage(tmp_path, node_id="n2", cluster=CLUSTER)
    with pytest.raises(StorageError, match="not node 'n1' of cluster 'other'"):
        SqliteLogStorage(tmp_path, node_id=NODE_ID, cluster="other")
    open_log(tmp_path).close()  # the refusals left the dir usable by its owner


def test_a_data_dir_in_use_is_refused(tmp_path: Path) -> None:
    first = open_log(tmp_path)
    with pytest.raises(StorageError, match="in use"):
        open_log(tmp_path)
    first.close()
    open_log(tmp_path).close()


def test_an_unusable_path_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a directory")
    with pytest.raises(StorageError, match="not usable"):
        open_log(blocker / "data")


def test_a_database_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    open_log(tmp_path).close()
    (tmp_path / "raft-log.sqlite3").write_bytes(b"garbage" * 1000)
    with pytest.raises(StorageError):
        open_log(tmp_path)


def test_a_snapshot_written_apart_leaves_the_log_until_it_is_cut(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(entries(1, 10))
    meta = SnapshotMeta(index=6, term=1, membership=MEMBERSHIP)
    log.write_snapshot(meta, b"six")
    log.append(entries(11, 12))  # the log goes on meanwhile
    log.sync()
    assert log.load().entries == entries(1, 12)
    log.cut_log_to_snapshot(meta)
    state = reopened(log)
    assert (state.snapshot, state.snapshot_data) == (meta, b"six")
    assert state.entries == entries(7, 12)


def test_a_crash_between_writing_a_snapshot_and_cutting_the_log_completes_the_cut(
    tmp_path: Path,
) -> None:
    log = open_log(tmp_path)
    log.append(entries(1, 10))
    log.write_snapshot(SnapshotMeta(index=6, term=1, membership=MEMBERSHIP), b"six")
    state = reopened(log)  # no cut_log_to_snapshot: the next start does it
    assert state.snapshot.index == 6
    assert state.entries == entries(7, 10)


def test_cutting_to_a_snapshot_a_newer_one_overtook_changes_nothing(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(entries(1, 10))
    older = SnapshotMeta(index=4, term=1, membership=MEMBERSHIP)
    log.write_snapshot(older, b"four")
    log.save_snapshot(SnapshotMeta(index=8, term=1, membership=MEMBERSHIP), b"eight")
    log.cut_log_to_snapshot(older)
    with pytest.raises(ValueError, match="snapshot 8"):  # still covered by the newer one
        log.append(entries(8, 9))
    state = reopened(log)
    assert (state.snapshot.index, state.snapshot_data) == (8, b"eight")
    assert state.entries == entries(9, 10)


def test_cutting_the_log_to_a_snapshot_does_not_rewrite_what_it_drops(tmp_path: Path) -> None:
    """Where SQLite is built with secure_delete on, every dropped page was written again as
    zeros: a snapshot's cut cost as much I/O as the log it dropped."""
    log = open_log(tmp_path)
    big = [Entry(index=i, term=1, data=os.urandom(8000)) for i in range(1, 101)]  # ~800 KB
    log.append(big)
    log.sync()
    wal = tmp_path / "raft-log.sqlite3-wal"
    before = wal.stat().st_size
    log.save_snapshot(SnapshotMeta(index=100, term=1, membership=MEMBERSHIP), b"state")
    assert wal.stat().st_size - before < 100_000
    log.close()


def test_the_slowest_sync_since_the_last_look_is_kept_for_the_disk_check(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    try:
        log.take_slowest_sync_s()  # opening wrote (and synced) the log's owner
        assert log.take_slowest_sync_s() == 0.0
        log.append(entries(1, 3))
        log.sync()
        log.sync()  # nothing to commit: no fsync, nothing measured
        slowest = log.take_slowest_sync_s()
        assert slowest > 0.0
        assert log.take_slowest_sync_s() == 0.0  # taken: the next round starts afresh
    finally:
        log.close()


def test_a_snapshot_keeps_the_addresses_of_added_members(tmp_path: Path) -> None:
    """A node restarted from a snapshot still reaches members added at run time."""
    log = open_log(tmp_path)
    added = Membership(frozenset({"n1", "n9"}), addresses=(("n9", "tcp://10.0.0.9:7109"),))
    log.append(entries(1, 5))
    log.save_snapshot(SnapshotMeta(index=5, term=1, membership=added), b"state")
    assert reopened(log).snapshot.membership.addresses == (("n9", "tcp://10.0.0.9:7109"),)
