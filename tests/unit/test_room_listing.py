"""Which rooms `GET /api/rooms` lists: public rooms in use only (services/readstore/queries.py)."""

from __future__ import annotations

from services.readstore.queries import public_rooms
from services.readstore.store import open_read_store


def test_a_public_room_is_listed_once_it_holds_a_message_or_a_member_joined(tmp_path):
    conn = open_read_store(tmp_path / "read.db")
    for name, private in (("opened", 0), ("chatty", 0), ("visited", 0), ("secret", 1)):
        conn.execute(
            "INSERT INTO rooms (name, private, created_at, last_activity) VALUES (?, ?, 1, 1)",
            (name, private),
        )
    # A room object created but never used (a socket that opened and went) is not listed.
    assert [r["name"] for r in public_rooms(conn, 50)] == []
    conn.execute("UPDATE rooms SET message_count = 1 WHERE name IN ('chatty', 'secret')")
    conn.execute(
        "INSERT INTO members_seen (room, name, first_seen, last_seen, joins)"
        " VALUES ('visited', 'alice', 2, 2, 1), ('secret', 'bob', 2, 2, 1)"
    )
    assert sorted(r["name"] for r in public_rooms(conn, 50)) == ["chatty", "visited"]
