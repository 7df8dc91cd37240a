"""The room read models, projected from the room streams' stored commits.

Each stored commit is decoded without the room's domain classes (the projector depends on
the stored format, not on the service's code): a topic, a version and a JSON state per
event. Every event is matched by name; an unknown name or a payload without the expected
fields is recorded in `dead_letters` with its stream sequence and the error, and skipped.
The caller records the stream position in the same transaction as the rows.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from contracts.keys import InvalidKey, key_from_token
from services.runtime.eventstore import new_mapper

ROOM_STREAM = "EVT_ROOM"


class CommitUnreadable(Exception):
    """A stored commit that is not the stored-commit format at all."""


@dataclass(frozen=True)
class StoredEvent:
    name: str  # e.g. "MessagePosted"
    version: int
    data: dict[str, Any]

    @property
    def timestamp_ms(self) -> int:
        stamp = self.data.get("timestamp")
        if isinstance(stamp, dt.datetime):
            return int(stamp.timestamp() * 1000)
        raise ValueError("event has no timestamp")


_transcoder = new_mapper().transcoder


def decode_commit(data: bytes) -> list[StoredEvent | Exception]:
    """The events of one stored commit; an event that cannot be decoded is its exception."""
    try:
        body = json.loads(data)
        rows = body["events"]
        if not isinstance(rows, list):
            raise TypeError("events is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise CommitUnreadable(f"not a stored commit: {exc}") from exc
    events: list[StoredEvent | Exception] = []
    for row in rows:
        try:
            topic, version, state = row
            name = str(topic).rsplit(".", 1)[-1].rsplit(":", 1)[-1]
            events.append(StoredEvent(name, int(version), _transcoder.decode(state.encode())))
        except (ValueError, TypeError, AttributeError) as exc:  # a dead letter, not a crash
            events.append(exc)
    return events


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Created(_Payload):
    name: str
    private: bool


class MemberJoined(_Payload):
    member_name: str


class MemberLeft(_Payload):
    member_name: str


class MessagePosted(_Payload):
    message_id: str
    member_name: str
    text: str
    posted_at: int


IGNORED = frozenset({"AlarmSet", "AlarmCleared"})
KNOWN = IGNORED | {"Created", "MemberJoined", "MemberLeft", "MessagePosted", "Expired"}


class UnknownEvent(Exception):
    """An event name this projection does not know."""


def apply_room_event(conn: sqlite3.Connection, room: str, event: StoredEvent) -> None:
    """Write what one room event means for the read models (raises on a bad event)."""
    if event.name not in KNOWN:
        raise UnknownEvent(f"unknown room event {event.name!r}")
    if event.name in IGNORED:
        return
    at = event.timestamp_ms
    match event.name:
        case "Created":
            e = Created.model_validate(event.data)
            conn.execute(
                "INSERT INTO rooms (name, private, created_at, last_activity) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO NOTHING",
                (room, int(e.private), at, at),
            )
        case "MemberJoined":
            e = MemberJoined.model_validate(event.data)
            conn.execute(
                "INSERT INTO members_seen (room, name, first_seen, last_seen, joins)"
                " VALUES (?, ?, ?, ?, 1) ON CONFLICT (room, name) DO UPDATE"
                " SET last_seen = excluded.last_seen, joins = joins + 1",
                (room, e.member_name, at, at),
            )
            _touch(conn, room, at)
        case "MemberLeft":
            e = MemberLeft.model_validate(event.data)
            conn.execute(
                "UPDATE members_seen SET last_seen = ? WHERE room = ? AND name = ?",
                (at, room, e.member_name),
            )
        case "MessagePosted":
            e = MessagePosted.model_validate(event.data)
            inserted = conn.execute(
                "INSERT INTO messages (room, id, author, text, timestamp, kind, version)"
                " VALUES (?, ?, ?, ?, ?, 'user', ?) ON CONFLICT (room, id) DO NOTHING",
                (room, e.message_id, e.member_name, e.text, e.posted_at, event.version),
            ).rowcount
            conn.execute(
                "UPDATE rooms SET message_count = message_count + ?,"
                " last_activity = max(last_activity, ?) WHERE name = ?",
                (inserted, e.posted_at, room),
            )
        case "Expired":
            conn.execute("UPDATE rooms SET expired = 1 WHERE name = ?", (room,))


def _touch(conn: sqlite3.Connection, room: str, at: int) -> None:
    conn.execute(
        "UPDATE rooms SET last_activity = max(last_activity, ?) WHERE name = ?", (at, room)
    )


def room_of(subject: str) -> str:
    """The room key of an event subject `evt.room.<token>`."""
    return key_from_token(subject.split(".", 2)[2])


def dead_letter(
    conn: sqlite3.Connection, stream: str, sequence: int, index: int, subject: str,
    error: str, payload: bytes | str,
) -> None:
    text = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
    conn.execute(
        "INSERT INTO dead_letters (stream, sequence, event_index, subject, error, payload,"
        " recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (stream, sequence, index, subject, error[:1000], text[:10_000], int(time.time() * 1000)),
    )


def project_commit(
    conn: sqlite3.Connection, stream: str, subject: str, sequence: int, data: bytes
) -> int:
    """Apply one stored commit of the room stream; returns how many events were dead-lettered."""
    try:
        room = room_of(subject)
        events = decode_commit(data)
    except (CommitUnreadable, InvalidKey, IndexError) as exc:
        dead_letter(conn, stream, sequence, -1, subject, str(exc), data)
        return 1
    failed = 0
    for index, event in enumerate(events):
        try:
            if isinstance(event, Exception):
                raise event
            apply_room_event(conn, room, event)
        except (UnknownEvent, ValidationError, ValueError, TypeError, KeyError) as exc:
            dead_letter(conn, stream, sequence, index, subject, f"{type(exc).__name__}: {exc}", data)
            failed += 1
    return failed


def position(conn: sqlite3.Connection, stream: str) -> int:
    row = conn.execute(
        "SELECT sequence FROM projector_positions WHERE stream = ?", (stream,)
    ).fetchone()
    return row[0] if row else 0


def record_position(conn: sqlite3.Connection, stream: str, sequence: int) -> None:
    conn.execute(
        "INSERT INTO projector_positions (stream, sequence) VALUES (?, ?)"
        " ON CONFLICT (stream) DO UPDATE SET sequence = excluded.sequence",
        (stream, sequence),
    )
