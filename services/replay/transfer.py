"""Moving a room's history out and in: an export is its commits as JSON lines, and an import
appends them, re-originated, to a room that has no events yet.

The commits are read and written through the runtime's store and codec: an import decodes
the exported events into the room's domain events, moves them onto the new room's aggregate
id, and appends them with `ObjectEventStore.append` (the subject sequence it follows, a
commit id per commit), as the room service itself appends.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import TopicError
from nats.aio.client import Client as NATS

from contracts.keys import is_private_room_id
from contracts.room import MAX_NAME_LENGTH
from contracts.subjects import ROOM
from services.replay.roomstream import Progress, ReplayError, room_messages
from services.room.domainmodel import Room, room_id
from services.runtime.eventstore import (
    AppendConflict,
    CommitCodec,
    ObjectEventStore,
    StoredMessage,
)

# --- export ----------------------------------------------------------------------------------


def export_line(room: str, msg: StoredMessage, codec: CommitCodec | None = None) -> str:
    """One commit as one JSON line: where and when it was stored, and its events as stored
    (topic, version, state JSON). A commit that is not the stored format is kept as text."""
    line: dict[str, Any] = {"room": room, "sequence": msg.sequence, "time": msg.time}
    try:
        stored = (codec or CommitCodec()).stored_events(msg.data)
        if not stored:
            raise ValueError("it has no events")
        line["id"] = str(stored[0].originator_id)
        line["events"] = [
            {"topic": s.topic, "version": s.originator_version, "state": s.state.decode()}
            for s in stored
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        line = {**line, "error": f"not a stored commit: {exc}",
                "data": msg.data.decode("utf-8", "replace")}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


async def export_room(nc: NATS, name: str) -> list[str]:
    """Room `name`'s commits as export lines, oldest first; refused if it has none."""
    history = await room_messages(nc, name)
    if not history:
        raise ReplayError(f"room {name!r} has no events")
    codec = CommitCodec()
    return [export_line(name, msg, codec) for msg in history]


# --- import ----------------------------------------------------------------------------------


@dataclass
class Imported:
    room: str
    commits: int
    events: int
    skipped: int
    last_sequence: int


def exported_events(line: dict[str, Any], codec: CommitCodec) -> list[Any]:
    """The domain events of one export line, decoded by the codec as if read from the stream."""
    originator_id = UUID(line["id"])
    return [
        codec.mapper.to_domain_event(StoredEvent(
            originator_id=originator_id,
            originator_version=int(event["version"]),
            topic=event["topic"],
            state=event["state"].encode(),
        ))
        for event in line["events"]
    ]


def reoriginated(event: Any, new: str) -> Any:
    """`event` as room `new`'s: its aggregate id, and the name in its Created event."""
    changes: dict[str, Any] = {"originator_id": room_id(new)}
    if isinstance(event, Room.Created):
        changes["name"] = new
    return dataclasses.replace(event, **changes)


def prepare_import(lines: Iterable[str], new: str) -> tuple[list[list[Any]], int]:
    """The commits of an export, as room `new`'s domain events (see `reoriginated`).
    Checked before anything is written: it must start with Created and its versions must
    follow on. Returns the commits and how many unreadable commits (exported as text) were
    left out."""
    if not new:
        raise ReplayError("the new room needs a name")
    codec = CommitCodec()
    commits: list[list[Any]] = []
    skipped = 0
    version = 0
    private: bool | None = None
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            if "error" in line and "events" not in line:
                skipped += 1
                continue
            events = exported_events(line, codec)
        except (ValueError, KeyError, TypeError, AttributeError, TopicError) as exc:
            # not JSON, not an export's fields, or events the room's classes cannot decode
            raise ReplayError(f"line {number}: not an exported commit ({exc})") from exc
        for event in events:
            if event.originator_version != version + 1:
                raise ReplayError(
                    f"line {number}: version {event.originator_version} does not follow "
                    f"{version}; an export of a whole room has versions 1, 2, 3, ..."
                )
            version = event.originator_version
            if isinstance(event, Room.Created):
                private = bool(event.private)
            elif version == 1:
                raise ReplayError(f"line {number}: the export does not start with Created")
        if events:
            commits.append([reoriginated(event, new) for event in events])
    if not commits:
        raise ReplayError("nothing to import: the file holds no commits")
    if private and not is_private_room_id(new):
        raise ReplayError(f"the exported room is private; import it under a private room id "
                          f"(64 lowercase hex), not {new!r}")
    if not private and (is_private_room_id(new) or len(new) > MAX_NAME_LENGTH):
        raise ReplayError(f"{new!r} cannot name a public room (at most {MAX_NAME_LENGTH} "
                          "characters, and not 64 hex)")
    return commits, skipped


async def import_room(
    nc: NATS, lines: Iterable[str], new: str, progress: Progress | None = None
) -> Imported:
    """Append an export's commits to room `new`, which must not exist: each append names
    the subject sequence it follows (0 for the first), so a room that exists, or one that
    someone starts using during the import, is refused by the server itself."""
    commits, skipped = prepare_import(lines, new)
    store = ObjectEventStore(nc, ROOM)
    await store.ensure_stream()
    last = await store.last_sequence(new)
    if last:
        raise ReplayError(f"room {new!r} already exists (last commit at sequence {last}); "
                          "import into a room that has no events")
    expected = 0
    for index, events in enumerate(commits):
        try:
            expected = await store.append(new, events, expected, f"import:{new}:{index}")
        except AppendConflict as exc:
            what = "already exists" if index == 0 else "was written to during the import"
            raise ReplayError(f"room {new!r} {what}; stopped after {index} commits") from exc
        if progress:
            progress(index + 1)
    events = sum(len(commit) for commit in commits)
    return Imported(new, len(commits), events, skipped, expected)
