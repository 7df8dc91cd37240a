"""The `uploads` read model, projected from the upload objects' stored commits (EVT_UPLOAD).

Decoded like the room projection, without the aggregate: each event by its name
(`services.upload.domainmodel:Upload.<Name>`) and the fields it stores. An unknown name or
a payload without the fields it needs is a dead letter, and the projector moves on.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from contracts.keys import key_from_token
from services.readstore.projection import StoredEvent, project_object_commit

UPLOAD_STREAM = "EVT_UPLOAD"
STATES = {"Rejected": "rejected", "Expired": "expired", "Deleted": "deleted"}
GEMINI = {"HandOffStarted", "GeminiChecked", "HandOffFailed", "GeminiCopyLost"}
IGNORED = {"HandOffProgress", "GeminiPollDue"}  # progress, not read models
KNOWN = {"Created", "RangeAccepted", "Completed", *STATES, *GEMINI, *IGNORED}


class UnknownUploadEvent(Exception):
    pass


def apply_upload_event(conn: sqlite3.Connection, upload_id: str, event: StoredEvent) -> None:
    if event.name not in KNOWN:
        raise UnknownUploadEvent(f"unknown upload event {event.name!r}")
    at = event.timestamp_ms
    e: dict[str, Any] = event.data
    match event.name:
        case "Created":
            length = int(e["length"])
            conn.execute(
                "INSERT INTO uploads (id, owner, room, name, type, size, received, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)"
                " ON CONFLICT (id) DO NOTHING",
                (upload_id, e["owner"], e["room"], str(e["name"]), str(e["mime"]), length,
                 "stored" if length == 0 else "receiving", at, at),
            )
        case "RangeAccepted":
            conn.execute(
                "UPDATE uploads SET received = ?, updated_at = ?,"
                " state = CASE WHEN ? >= size THEN 'stored' ELSE state END WHERE id = ?",
                (int(e["offset"]) + int(e["length"]), at, int(e["offset"]) + int(e["length"]), upload_id),
            )
        case name if name in IGNORED:
            return
        case name if name in GEMINI:
            gemini_state = {"HandOffStarted": "uploading", "HandOffFailed": "FAILED",
                            "GeminiCopyLost": None}.get(name, e.get("state"))
            conn.execute(
                "UPDATE uploads SET gemini_state = ?, updated_at = ? WHERE id = ?",
                (gemini_state, at, upload_id),
            )
        case "Completed":
            conn.execute(
                "UPDATE uploads SET state = 'complete', sha256 = ?, updated_at = ? WHERE id = ?",
                (str(e["sha256"]), at, upload_id),
            )
        case _:
            conn.execute(
                "UPDATE uploads SET state = ?, reason = coalesce(?, reason), updated_at = ?"
                " WHERE id = ?",
                (STATES[event.name], e.get("reason"), at, upload_id),
            )


def project_upload_commit(
    conn: sqlite3.Connection, stream: str, subject: str, sequence: int, data: bytes
) -> int:
    """Apply one stored commit of an upload; returns how many events were dead-lettered."""
    return project_object_commit(
        conn, stream, subject, sequence, data, lambda s: key_from_token(s.rsplit(".", 1)[1]),
        apply_upload_event, (UnknownUploadEvent, ValueError, TypeError, KeyError),
    )
