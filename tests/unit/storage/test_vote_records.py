"""The vote record file: records survive a reopen, a line cut short is skipped, and the file is
trimmed to its last records once it holds twice as many."""

from caddy.raft.ready import VoteRecord
from caddy.storage.vote_records import FILE_NAME, VoteRecords, vote_document


def votes(first, count):
    return [
        vote_document(VoteRecord(term, f"n{term % 3}", term % 2 == 0, False, "why"), 100.0 + term)
        for term in range(first, first + count)
    ]


def test_records_survive_a_reopen_in_order(tmp_path):
    VoteRecords(tmp_path).append(votes(1, 3))
    reopened = VoteRecords(tmp_path)
    reopened.append(votes(4, 2))
    assert [r["term"] for r in VoteRecords(tmp_path).load()] == [1, 2, 3, 4, 5]
    assert VoteRecords(tmp_path).load()[0] == {
        "term": 1,
        "candidate": "n1",
        "granted": False,
        "pre_vote": False,
        "reason": "why",
        "time": 101.0,
    }


def test_a_line_cut_short_by_a_crash_and_foreign_lines_are_skipped(tmp_path):
    records = VoteRecords(tmp_path)
    records.append(votes(1, 2))
    with open(tmp_path / FILE_NAME, "a") as file:
        file.write('{"term": 3, "candidate": "n0", "gra')  # the crash
        file.write('\n{"term": "x"}\n[1, 2]\n')
    records.append(votes(4, 1))
    assert [r["term"] for r in VoteRecords(tmp_path).load()] == [1, 2, 4]


def test_the_file_keeps_its_last_records_once_it_holds_twice_as_many(tmp_path):
    records = VoteRecords(tmp_path, keep=10)
    for first in range(1, 60, 3):
        records.append(votes(first, 3))
    kept = VoteRecords(tmp_path, keep=10).load()
    assert len(kept) <= 20 and [r["term"] for r in kept] == list(range(61 - len(kept), 61))
    assert not (tmp_path / "votes.tmp").exists()


def test_no_file_means_no_records(tmp_path):
    assert VoteRecords(tmp_path / "absent").load() == []
