"""An upload's history for the replay CLI: its events (decoded without the domain classes, as
the projector does), its state replayed as of a stream sequence, and its commits as JSON
lines (`durachat-replay upload <id> [--seq N] [--events] [--export FILE]`)."""

from __future__ import annotations

import json
from typing import Any

from nats.aio.client import Client as NATS

from contracts.upload import UPLOAD
from services.replay.history import event_rows
from services.runtime.eventstore import CommitCodec, ObjectEventStore, StoredMessage
from services.upload.handlers import view


async def upload_messages(nc: NATS, upload_id: str) -> list[StoredMessage]:
    store = ObjectEventStore(nc, UPLOAD)
    try:
        return await store.read_messages(upload_id)
    except Exception as exc:  # no stream yet: no upload has ever been made
        if "no stream" in str(exc).lower() or "503" in str(exc):
            return []
        raise


def upload_state(messages: list[StoredMessage], seq: int | None = None) -> dict[str, Any] | None:
    """The upload as its view, replayed from its commits up to `seq` (all when None)."""
    codec = CommitCodec()
    aggregate = None
    for msg in messages:
        if seq is not None and msg.sequence > seq:
            break
        for event in codec.decode(msg.data):
            aggregate = event.mutate(aggregate)
    return None if aggregate is None else view(aggregate).model_dump(mode="json")


def upload_events(messages: list[StoredMessage]) -> list[dict[str, Any]]:
    return [row for msg in messages for row in event_rows(msg)]


def export_lines(messages: list[StoredMessage]) -> list[str]:
    return [json.dumps({"sequence": m.sequence, "time": m.time, "commit": json.loads(m.data)},
                       ensure_ascii=False) for m in messages]
