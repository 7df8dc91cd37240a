"""Read-side queries over the read store (the gateway's HTTP API serves these).

Plain SQL with bound parameters only, so the same statements run on D1.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Literal

Order = Literal["newest", "oldest"]


@dataclass(frozen=True)
class Cursor:
    """A position in a room's messages: (timestamp, id), unique and totally ordered."""

    timestamp: int
    id: str

    def encode(self) -> str:
        return f"{self.timestamp}:{self.id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        timestamp, sep, message_id = text.partition(":")
        if (
            not sep
            or not (timestamp.isascii() and timestamp.isdigit())
            or len(timestamp) > 18  # SQLite integers are 64-bit; ms timestamps need 13 digits
            or not message_id
            or len(message_id) > 64
        ):
            raise ValueError("a cursor is <timestamp>:<message id>, as returned in next_cursor")
        return cls(int(timestamp), message_id)


def public_rooms(conn: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    """Public rooms in use, most recently active first: a room is listed once it holds a
    message or a named member has joined it (opening a socket is not enough). Private rooms
    are never listed."""
    return conn.execute(
        "SELECT name, created_at, last_activity, message_count FROM rooms"
        " WHERE private = 0 AND expired = 0 AND (message_count > 0"
        " OR EXISTS (SELECT 1 FROM members_seen WHERE members_seen.room = rooms.name))"
        " ORDER BY last_activity DESC, name LIMIT ?",
        (limit,),
    ).fetchall()


def room(conn: sqlite3.Connection, name: str) -> sqlite3.Row | None:
    return conn.execute(
        "SELECT name, private, created_at, last_activity, message_count FROM rooms"
        " WHERE name = ? AND expired = 0",
        (name,),
    ).fetchone()


def members_seen(conn: sqlite3.Connection, name: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT name, first_seen, last_seen, joins FROM members_seen WHERE room = ?"
        " ORDER BY first_seen, name",
        (name,),
    ).fetchall()


def messages(
    conn: sqlite3.Connection, name: str, limit: int, order: Order, after: Cursor | None
) -> tuple[list[sqlite3.Row], Cursor | None]:
    """A page of a room's messages and the cursor of the next page (None: no more)."""
    newest = order == "newest"
    where = "room = ?"
    params: list[str | int] = [name]
    if after is not None:
        # Keyset pagination: strictly past the cursor in the page's direction.
        where += " AND (timestamp, id) < (?, ?)" if newest else " AND (timestamp, id) > (?, ?)"
        params += [after.timestamp, after.id]
    direction = "DESC" if newest else "ASC"
    rows = conn.execute(
        f"SELECT id, author, text, timestamp, kind FROM messages WHERE {where}"
        f" ORDER BY timestamp {direction}, id {direction} LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    page = rows[:limit]
    more = len(rows) > limit
    return page, (Cursor(page[-1]["timestamp"], page[-1]["id"]) if more and page else None)


def attachments(
    conn: sqlite3.Connection, name: str, first: int, last: int
) -> dict[str, list[sqlite3.Row]]:
    """The attachments of a room's messages with timestamps in [first, last], by message id,
    in order, with what the read store knows of each upload (its row may not be there yet)."""
    rows = conn.execute(
        "SELECT a.message_id, a.upload_id, u.name, u.type, u.size, u.state, u.gemini_state"
        " FROM message_attachments a LEFT JOIN uploads u ON u.id = a.upload_id"
        " WHERE a.room = ? AND a.timestamp BETWEEN ? AND ? ORDER BY a.message_id, a.position",
        (name, first, last),
    ).fetchall()
    found: dict[str, list[sqlite3.Row]] = {}
    for row in rows:
        found.setdefault(row["message_id"], []).append(row)
    return found


def upload(conn: sqlite3.Connection, upload_id: str) -> sqlite3.Row | None:
    return conn.execute(
        "SELECT id, owner, room, name, type, size, received, state, gemini_state, sha256, reason,"
        " created_at, updated_at FROM uploads WHERE id = ?",
        (upload_id,),
    ).fetchone()


def uploads_of(conn: sqlite3.Connection, owner: str, limit: int) -> list[sqlite3.Row]:
    """A user's uploads, newest first (to resume one from another device, say)."""
    return conn.execute(
        "SELECT id, room, name, type, size, received, state, gemini_state, created_at, updated_at"
        " FROM uploads WHERE owner = ? ORDER BY created_at DESC, id LIMIT ?",
        (owner, limit),
    ).fetchall()
