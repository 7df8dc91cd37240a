"""The read store in tests: its tables read for comparisons, and commits it must set aside."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.api import PubAck

from contracts.subjects import ROOM, event_subject

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


async def publish_unreadable_commits(js: JetStreamContext, room: str) -> tuple[PubAck, PubAck]:
    """Two commits on `room`'s event subject that the projector must dead-letter: one that is
    not JSON, then one holding an event no room knows. Their acks, in that order."""
    subject = event_subject(ROOM, room)
    garbage = await js.publish(subject, b"not json")
    unknown = await js.publish(subject, json.dumps({
        "id": str(uuid.uuid4()),
        "events": [["services.room.domainmodel:Room.Teleported", 1, "{}"]],
    }).encode())
    return garbage, unknown
