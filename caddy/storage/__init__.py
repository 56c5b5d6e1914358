"""Durable storage for a node's Raft state under its data dir.

`SqliteLogStorage` keeps term, vote, commit, log and the latest snapshot; `StorageError` reports an
unusable or corrupt data dir.
"""

from caddy.storage.errors import StorageError
from caddy.storage.sqlite_log import SqliteLogStorage

__all__ = ["SqliteLogStorage", "StorageError"]
