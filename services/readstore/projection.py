"""The room read models, projected from the room streams' stored commits.

Each stored commit is decoded without the room's aggregate (the projector depends on the
stored format, not on the service's code): a topic, a version and a JSON state per event.
Every event is matched by name against the room's event schema (services.room.events); an
unknown name or a payload without the schema's fields (or outside its bounds) is recorded
in `dead_letters` with its stream sequence and the error, and skipped.
The caller records the stream position in the same transaction as the rows.

AI usage: every finished AI reply is a row of `ai_replies` (keyed by room and reply id), and
`ai_usage_daily` is kept equal to their sums per user and UTC day: a reply's counts are added
only when its row is new, and `forget_room` re-counts the days of the rows it deletes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from contracts.keys import InvalidKey, key_from_token
from contracts.room import AI_NAME, SYSTEM_NAME
from services.room import events
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
    decoded: list[StoredEvent | Exception] = []
    for row in rows:
        try:
            topic, version, state = row
            name = str(topic).rsplit(".", 1)[-1].rsplit(":", 1)[-1]
            decoded.append(StoredEvent(name, int(version), _transcoder.decode(state.encode())))
        except (ValueError, TypeError, AttributeError) as exc:  # a dead letter, not a crash
            decoded.append(exc)
    return decoded


def _payload_model(cls: type) -> type[BaseModel]:
    """A validator of what an event of `cls` stores (its fields in services.room.events)."""
    fields: dict[str, Any] = {
        f.name: (f.type, ... if f.default is dataclasses.MISSING else f.default)
        for f in events.stored_fields(cls)
    }
    return create_model(cls.__name__, __config__=ConfigDict(extra="ignore"), **fields)


# The AI reply's progress (asked, dispatched, started, every streamed chunk) is the room's
# live state, not a read model: only the finished reply is projected.
IGNORED: frozenset[type] = frozenset({
    events.AlarmSet, events.AlarmCleared,
    events.AiReplyRequested, events.AiReplyDispatched, events.AiReplyStarted,
    events.AiReplyChunk, events.AiReplyAlive,
})
PROJECTED: frozenset[type] = frozenset({
    events.Created, events.MemberJoined, events.MemberLeft, events.MessagePosted,
    events.Expired, events.SystemMessagePosted, events.AiReplyCompleted, events.AiReplyFailed,
})
KNOWN = frozenset(cls.__name__ for cls in IGNORED | PROJECTED)
_PAYLOADS = {cls.__name__: (cls, _payload_model(cls)) for cls in PROJECTED}


class UnknownEvent(Exception):
    """An event name this projection does not know."""


def apply_room_event(conn: sqlite3.Connection, room: str, event: StoredEvent) -> None:
    """Write what one room event means for the read models (raises on a bad event)."""
    if event.name not in KNOWN:
        raise UnknownEvent(f"unknown room event {event.name!r}")
    if event.name not in _PAYLOADS:
        return
    at = event.timestamp_ms
    schema, payload = _PAYLOADS[event.name]
    e: Any = payload.model_validate(event.data)
    match schema:
        case events.Created:
            conn.execute(
                "INSERT INTO rooms (name, private, created_at, last_activity) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO NOTHING",
                (room, int(e.private), at, at),
            )
        case events.MemberJoined:
            conn.execute(
                "INSERT INTO members_seen (room, name, first_seen, last_seen, joins)"
                " VALUES (?, ?, ?, ?, 1) ON CONFLICT (room, name) DO UPDATE"
                " SET last_seen = excluded.last_seen, joins = joins + 1",
                (room, e.member_name, at, at),
            )
            _touch(conn, room, at)
        case events.MemberLeft:
            conn.execute(
                "UPDATE members_seen SET last_seen = ? WHERE room = ? AND name = ?",
                (at, room, e.member_name),
            )
        case events.MessagePosted:
            _message(conn, room, e.message_id, e.member_name, e.text, e.posted_at, "user",
                     event.version)
            for index, upload_id in enumerate(e.attachments):
                conn.execute(
                    "INSERT INTO message_attachments (room, message_id, position, upload_id,"
                    " timestamp) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (room, e.message_id, index, upload_id, e.posted_at),
                )
        case events.SystemMessagePosted:
            _message(conn, room, e.message_id, SYSTEM_NAME, e.text, e.posted_at, "system",
                     event.version)
        case events.AiReplyCompleted:
            _message(conn, room, e.reply_id, AI_NAME, e.text, e.posted_at, "ai", event.version)
            _ai_reply(conn, room, e, "completed", None, requests=1)
        case events.AiReplyFailed:
            if e.text:  # what was streamed, marked incomplete; nothing streamed: no message
                _message(conn, room, e.reply_id, AI_NAME, e.text, e.posted_at, "ai",
                         event.version)
            _ai_reply(conn, room, e, "failed", e.reason, requests=int(e.provider_called))
        case events.Expired:
            conn.execute("UPDATE rooms SET expired = 1 WHERE name = ?", (room,))


def _message(
    conn: sqlite3.Connection, room: str, message_id: str, author: str, text: str, at: int,
    kind: str, version: int,
) -> None:
    """A message row, and the room's count and activity (counted once per message id)."""
    inserted = conn.execute(
        "INSERT INTO messages (room, id, author, text, timestamp, kind, version)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (room, id) DO NOTHING",
        (room, message_id, author, text, at, kind, version),
    ).rowcount
    conn.execute(
        "UPDATE rooms SET message_count = message_count + ?,"
        " last_activity = max(last_activity, ?) WHERE name = ?",
        (inserted, at, room),
    )


_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def utc_day(ms: int) -> str:
    """The UTC day `YYYY-MM-DD` of a time in ms since the epoch (integer arithmetic)."""
    return dt.date.fromordinal(_EPOCH_ORDINAL + ms // 86_400_000).isoformat()


def _ai_reply(
    conn: sqlite3.Connection, room: str, e: Any, outcome: str,
    reason: str | None, requests: int,
) -> None:
    """The reply's fact row; its counts go into ai_usage_daily only if the row is new."""
    day = utc_day(e.posted_at)
    inserted = conn.execute(
        "INSERT INTO ai_replies (room, reply_id, user_id, outcome, reason, finished_at, day,"
        " requests, prompt_tokens, output_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (room, reply_id) DO NOTHING",
        (room, e.reply_id, e.user_id, outcome, reason, e.posted_at, day, requests,
         e.prompt_tokens, e.output_tokens),
    ).rowcount
    tokens = e.prompt_tokens + e.output_tokens
    if inserted and (requests or tokens):
        conn.execute(
            "INSERT INTO ai_usage_daily (user_id, day, requests, tokens) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, day) DO UPDATE SET requests = requests + excluded.requests,"
            " tokens = tokens + excluded.tokens",
            (e.user_id, day, requests, tokens),
        )


def recount_ai_usage(conn: sqlite3.Connection, user_id: str, day: str) -> None:
    """Set one ai_usage_daily row to the sums of its ai_replies rows (none: no row)."""
    requests, tokens = conn.execute(
        "SELECT coalesce(sum(requests), 0), coalesce(sum(prompt_tokens + output_tokens), 0)"
        " FROM ai_replies WHERE user_id = ? AND day = ?",
        (user_id, day),
    ).fetchone()
    if requests or tokens:
        conn.execute(
            "INSERT INTO ai_usage_daily (user_id, day, requests, tokens) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, day) DO UPDATE SET requests = excluded.requests,"
            " tokens = excluded.tokens",
            (user_id, day, requests, tokens),
        )
    else:
        conn.execute("DELETE FROM ai_usage_daily WHERE user_id = ? AND day = ?", (user_id, day))


def forget_room(conn: sqlite3.Connection, room: str) -> dict[str, int]:
    """Delete every row projected from room `room` (before re-projecting it); returns how
    many rows each table lost. Usage is per user across rooms, so the days the room's AI
    replies counted in are re-counted from what the other rooms' replies left."""
    days = conn.execute(
        "SELECT DISTINCT user_id, day FROM ai_replies WHERE room = ?", (room,)
    ).fetchall()
    deleted = {
        "rooms": conn.execute("DELETE FROM rooms WHERE name = ?", (room,)).rowcount,
        "messages": conn.execute("DELETE FROM messages WHERE room = ?", (room,)).rowcount,
        "members_seen": conn.execute(
            "DELETE FROM members_seen WHERE room = ?", (room,)).rowcount,
        "ai_replies": conn.execute("DELETE FROM ai_replies WHERE room = ?", (room,)).rowcount,
    }
    for user_id, day in days:
        recount_ai_usage(conn, user_id, day)
    return deleted


def recount_room_ai_usage(conn: sqlite3.Connection, room: str) -> None:
    """Re-count every ai_usage_daily row that room `room`'s AI replies count in (after
    re-projecting it: this also repairs a row that had drifted from its replies)."""
    days = conn.execute(
        "SELECT DISTINCT user_id, day FROM ai_replies WHERE room = ?", (room,)
    ).fetchall()
    for user_id, day in days:
        recount_ai_usage(conn, user_id, day)


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
    return project_object_commit(
        conn, stream, subject, sequence, data, room_of, apply_room_event,
        (UnknownEvent, ValidationError, ValueError, TypeError, KeyError),
    )


def project_object_commit(
    conn: sqlite3.Connection, stream: str, subject: str, sequence: int, data: bytes,
    key_of: Callable[[str], str], apply: Callable[[sqlite3.Connection, str, Any], None],
    refused: tuple[type[Exception], ...],
) -> int:
    """Apply one stored commit of an object (its key read from the subject by `key_of`)
    event by event with `apply`; a commit that cannot be read, or an event `apply` refuses
    with one of `refused`, is dead-lettered. Returns how many were."""
    try:
        key = key_of(subject)
        events = decode_commit(data)
    except (CommitUnreadable, InvalidKey, IndexError) as exc:
        dead_letter(conn, stream, sequence, -1, subject, str(exc), data)
        return 1
    failed = 0
    for index, event in enumerate(events):
        try:
            if isinstance(event, Exception):
                raise event
            apply(conn, key, event)
        except refused as exc:
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
