"""A room's history: its events one by one, and the room object as it was at a stream
sequence or a time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

from contracts.subjects import ROOM, event_subject
from services.readstore.projection import CommitUnreadable, decode_commit
from services.replay.roomstream import jsonable, parse_time_ns, room_messages
from services.runtime.eventstore import CommitCodec, StoredMessage

FOLLOW_POLL = 2.0  # s: --follow looks at the stream this often even if nothing woke it


def event_rows(msg: StoredMessage) -> list[dict[str, Any]]:
    """The events of one stored commit, decoded without the domain classes (as the
    projector does); an undecodable commit or event is a row with an `error`."""
    base = {"sequence": msg.sequence, "time": msg.time}
    try:
        events = decode_commit(msg.data)
    except CommitUnreadable as exc:
        return [{**base, "error": str(exc), "data": msg.data.decode("utf-8", "replace")}]
    rows = []
    for index, event in enumerate(events):
        if isinstance(event, Exception):
            rows.append({**base, "index": index, "error": f"{type(event).__name__}: {event}"})
        else:
            rows.append({**base, "version": event.version, "event": event.name,
                         "fields": jsonable(event.data)})
    return rows


@dataclass
class RoomState:
    room: str
    sequence: int = 0  # the last commit applied
    time: str = ""  # its time
    aggregate: Any = None
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        room = self.aggregate
        if room is None:
            return {"room": self.room, "exists": False, "sequence": self.sequence,
                    "skipped": self.skipped}
        return {
            "room": self.room,
            "exists": True,
            "sequence": self.sequence,
            "time": self.time,
            "version": room.version,
            "private": room.private,
            "expired": room.expired,
            "alarm_at": room.alarm_at,
            "members": list(room.members.values()),
            "messages": room.messages,
            "skipped": self.skipped,
        }


def room_state(
    name: str, messages: Iterable[StoredMessage], seq: int | None = None, at_ns: int | None = None
) -> RoomState:
    """The Room aggregate replayed from its commits with sequence <= `seq` / stored at or
    before `at_ns` (all when neither). A commit or event that does not decode or apply is
    skipped and listed."""
    codec = CommitCodec()
    state = RoomState(name)
    for msg in messages:
        if seq is not None and msg.sequence > seq:
            break
        if at_ns is not None and parse_time_ns(msg.time) > at_ns:
            break
        try:
            events = codec.decode(msg.data)
        except Exception as exc:
            state.skipped.append(
                {"sequence": msg.sequence, "error": f"{type(exc).__name__}: {exc}"}
            )
            continue
        for event in events:
            try:
                state.aggregate = event.mutate(state.aggregate)
            except Exception as exc:
                state.skipped.append(
                    {"sequence": msg.sequence, "error": f"{type(exc).__name__}: {exc}"}
                )
        state.sequence, state.time = msg.sequence, msg.time
    return state



async def room_state_as_of(
    nc: NATS, name: str, seq: int | None = None, at_ns: int | None = None
) -> RoomState:
    """Room `name` as of stream sequence `seq` / time `at_ns` (now when neither)."""
    return room_state(name, await room_messages(nc, name), seq, at_ns)

async def room_commits(
    nc: NATS, name: str, follow: bool = False
) -> AsyncIterator[list[StoredMessage]]:
    """Room `name`'s commits so far (one list, maybe empty); with `follow`, then every batch
    of commits stored after them, as they come, until the caller stops."""
    # Subscribed before reading, so a commit stored meanwhile still wakes us up; what is
    # yielded always comes from the stream itself (sequence and time included).
    wake = await nc.subscribe(event_subject(ROOM, name)) if follow else None
    try:
        history = await room_messages(nc, name)
        yield history
        last = history[-1].sequence if history else 0
        while wake is not None:
            with suppress(nats.errors.TimeoutError):
                await wake.next_msg(timeout=FOLLOW_POLL)
            new = await room_messages(nc, name, after=last)
            if new:
                yield new
                last = new[-1].sequence
    finally:
        if wake is not None:
            with suppress(Exception):
                await wake.unsubscribe()
