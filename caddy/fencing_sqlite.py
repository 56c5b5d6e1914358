"""Fencing tokens kept in the resource's own SQLite database, checked in the write's transaction.

A resource whose data is in SQLite keeps the highest token per lock name in a table beside it and
checks inside the transaction of the write it guards, so that the check and the write commit
together or not at all (`caddy.fencing` says why that matters). A rejected check raises
StaleToken; `with conn:` then rolls back everything the transaction did, and the highest token
survives restarts with the data:

    fence = SqliteFence()
    fence.create(conn)                         # once: CREATE TABLE IF NOT EXISTS
    with conn:                                 # one transaction
        fence.check(conn, "reports", token)    # StaleToken for a token below one seen
        conn.execute("INSERT INTO reports VALUES (?)", (row,))

The check is one upsert that raises the stored token only when the new one is not below it, so
it takes SQLite's write lock first: two connections checking at once are serialised by SQLite
(the second waits, or fails with "database is locked" after the connection's timeout) and never
both read the same old token. The helper opens nothing; it runs on the caller's connection (a
`sqlite3.Connection` in the default, implicit-transaction mode, or one where the caller ran BEGIN).
"""

from __future__ import annotations

import re
from typing import Any

from caddy.fencing import StaleToken, validate

DEFAULT_TABLE = "caddy_fencing"
MAX_TOKEN = 2**63 - 1  # the largest SQLite INTEGER

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SqliteFence:
    """The highest token per lock name, in one table of the caller's SQLite database."""

    __slots__ = ("table", "_admit", "_select")

    def __init__(self, table: str = DEFAULT_TABLE) -> None:
        if not isinstance(table, str) or not _IDENTIFIER.fullmatch(table):
            raise ValueError(f"a table name must be a plain SQL identifier, got {table!r}")
        self.table = table
        self._admit = (
            f'INSERT INTO "{table}" (name, token) VALUES (?, ?) '
            f"ON CONFLICT (name) DO UPDATE SET token = excluded.token "
            f'WHERE excluded.token >= "{table}".token'
        )
        self._select = f'SELECT token FROM "{table}" WHERE name = ?'

    def create(self, conn: Any) -> None:
        """Create the table unless it exists."""
        conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{self.table}" '
            "(name TEXT PRIMARY KEY NOT NULL, token INTEGER NOT NULL)"
        )

    def check(self, conn: Any, name: str, token: int) -> None:
        """Record `token` in the caller's open transaction, or raise StaleToken when a higher one
        was recorded for `name` (the transaction then has nothing of this check to undo).

        RuntimeError when `conn` is in autocommit with no transaction open: the token was then
        committed on its own, and the write that follows would not be atomic with it.
        """
        validate(name, token)
        if token > MAX_TOKEN:
            raise ValueError(f"a fencing token in SQLite is at most {MAX_TOKEN}, got {token}")
        if conn.execute(self._admit, (name, token)).rowcount == 0:
            raise StaleToken(name, token, self.highest(conn, name))
        if not conn.in_transaction:
            raise RuntimeError(
                "SqliteFence.check needs an open transaction (`with conn:` in the default "
                "isolation level, or BEGIN) so that the check and the write commit together"
            )

    def highest(self, conn: Any, name: str) -> int | None:
        """The highest token recorded for `name`; None when none was."""
        if not isinstance(name, str):
            raise TypeError(f"a lock name must be a str, got {type(name).__name__}")
        row = conn.execute(self._select, (name,)).fetchone()
        return None if row is None else int(row[0])
