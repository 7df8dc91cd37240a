"""Schema migrations applied the way `wrangler d1 migrations apply` does.

Files `NNNN_name.sql` in the migrations folder are applied in name order; each applied one
is recorded by name in `d1_migrations` (wrangler's own table), so the same folder applies
unchanged to a Cloudflare D1 database and a database migrated by either knows what it has.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

MIGRATION_NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")
# The repository's migrations/ folder; an installed image points DURACHAT_MIGRATIONS_DIR at
# its copy (see the Dockerfile).
MIGRATIONS_DIR = Path(
    os.environ.get("DURACHAT_MIGRATIONS_DIR", Path(__file__).resolve().parents[2] / "migrations")
)

D1_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS d1_migrations(
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT UNIQUE,
    applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL
);
"""


class MigrationError(Exception):
    """A migration file is misnamed or failed to apply."""


def migration_files(folder: Path = MIGRATIONS_DIR) -> list[Path]:
    files = sorted(p for p in folder.glob("*.sql"))
    for path in files:
        if not MIGRATION_NAME.match(path.name):
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
    return files


def applied(conn: sqlite3.Connection) -> list[str]:
    conn.executescript(D1_MIGRATIONS)
    return [row[0] for row in conn.execute("SELECT name FROM d1_migrations ORDER BY id")]


def apply_migrations(conn: sqlite3.Connection, folder: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction; returns their names."""
    done = set(applied(conn))
    new = []
    for path in migration_files(folder):
        if path.name in done:
            continue
        sql = path.read_text()
        try:
            # executescript runs the file as written; the record goes in the same transaction.
            conn.executescript(
                f"BEGIN;\n{sql}\nINSERT INTO d1_migrations (name) VALUES ('{path.name}');\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            conn.rollback()
            raise MigrationError(f"{path.name}: {exc}") from exc
        new.append(path.name)
    return new
