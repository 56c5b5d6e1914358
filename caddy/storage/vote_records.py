"""The persistent, bounded audit record of a node's votes (CONTRACT 5, `caddy-ctl votes`): every
vote granted or refused, with its term, candidate, kind (pre-vote or vote) and reason.

One JSON line per vote in `votes.jsonl` under the node's data dir, so an operator can read it
with any tool after the node is gone. An audit, not Raft state: a line cut short by a crash is
skipped on load, and the file is rewritten to its last `keep` records (through a temporary file
and a rename) once it holds twice as many.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from caddy.raft.ready import VoteRecord

FILE_NAME = "votes.jsonl"
DEFAULT_KEEP = 1000
_FIELDS = {"term": int, "candidate": str, "granted": bool, "pre_vote": bool, "reason": str}


def vote_document(record: VoteRecord, when: float) -> dict[str, Any]:
    """A vote as the record and the status show it; `time` is the wall clock (seconds)."""
    return {
        "term": record.term,
        "candidate": record.candidate,
        "granted": record.granted,
        "pre_vote": record.pre_vote,
        "reason": record.reason,
        "time": round(when, 3),
    }


class VoteRecords:
    """The vote record file of one node's data dir."""

    def __init__(self, directory: Path, keep: int = DEFAULT_KEEP) -> None:
        self.path = Path(directory) / FILE_NAME
        self.keep = keep
        self._lines = len(self.load())

    def load(self) -> list[dict[str, Any]]:
        """Every well-formed record, oldest first (at most 2 x keep)."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return [record for line in text.splitlines() if (record := _parse(line)) is not None]

    def append(self, documents: Iterable[dict[str, Any]]) -> None:
        lines = [json.dumps(document, sort_keys=True) + "\n" for document in documents]
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as file:
            file.writelines(lines)
        self._lines += len(lines)
        if self._lines > 2 * self.keep:
            self._trim()

    def _trim(self) -> None:
        kept = self.load()[-self.keep :]
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            file.writelines(json.dumps(record, sort_keys=True) + "\n" for record in kept)
        os.replace(temporary, self.path)
        self._lines = len(kept)


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if type(record) is not dict or not all(type(record.get(k)) is t for k, t in _FIELDS.items()):
        return None
    if type(record.get("time")) not in (int, float):
        return None
    return record
