"""Reading the read store's tables for comparisons in tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

# The projected tables, each with the order that makes two stores comparable row for row.
TABLES = {
    "rooms": "name",
    "messages": "room, id",
    "members_seen": "room, name",
    "ai_replies": "room, reply_id",
    "ai_usage_daily": "user_id, day",
    "projector_positions": "stream",
    "dead_letters": "stream, sequence, event_index",
}


def rows(db: Path, table: str) -> list[tuple]:
    """All rows of `table`, in TABLES order; dead letters without recorded_at (when, not what)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found = conn.execute(f"SELECT * FROM {table} ORDER BY {TABLES[table]}").fetchall()
    finally:
        conn.close()
    return [r[:-1] for r in found] if table == "dead_letters" else found
