"""Opening the read store: a SQLite file, WAL locally, migrated on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from services.readstore.migrations import MIGRATIONS_DIR, apply_migrations


class ReadStoreError(Exception):
    """The read store file is missing, unreadable or not a database."""


def open_read_store(
    path: Path, *, create: bool = True, readonly: bool = False, migrations: Path = MIGRATIONS_DIR
) -> sqlite3.Connection:
    """A connection to the read store at `path`, migrated unless read-only.

    Autocommit mode (isolation_level=None): callers group writes with explicit
    `BEGIN IMMEDIATE` / `COMMIT` (see `transaction`).
    """
    path = Path(path)
    if not path.exists() and (readonly or not create):
        raise ReadStoreError(
            f"no read store at {path}: start the projector or run `durachat-replay rebuild`"
        )
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 5000")  # local only; D1 needs none of these
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            apply_migrations(conn, migrations)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise ReadStoreError(f"{path} is not a usable read store ({exc}); rebuild it with "
                             "`durachat-replay rebuild`") from exc
    return conn


class transaction:
    """`with transaction(conn):` one write transaction, committed or rolled back."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
