"""The room's stored events: one schema, read by the Room aggregate that records them, by
the projector that reads them without the aggregate, and by the tests.

Each class lists what one event stores besides its originator id, version and time. The
aggregate subclasses each (`Room.MessagePosted`, ...), so the streams hold them under the
topics `services.room.domainmodel:Room.<Name>`. Names and fields are in users' streams: a
new field needs a default (events stored before it lack it), and a rename is a new event.

The bounds are for readers of stored payloads (the projection): a payload outside them is a
dead letter, not a value SQLite or a date cannot hold. The aggregate's rules keep its own
events inside them.
"""

# No `from __future__ import annotations`: readers build validators from the field types.

import dataclasses
from typing import Annotated

from eventsourcing.domain import Aggregate
from pydantic import Field

Millis = Annotated[int, Field(ge=0, lt=253_402_300_800_000)]  # ms since the epoch, before 10000
Tokens = Annotated[int, Field(ge=0, le=1_000_000_000_000)]
ReplyId = Annotated[str, Field(min_length=1)]
UserId = Annotated[str, Field(min_length=1)]


class Created(Aggregate.Created):
    """A room came to be: public on first use, or private (`name` is its 64-hex id)."""

    name: str
    private: bool


class MemberJoined(Aggregate.Event):
    session_id: str
    member_name: str
    gateway_id: str | None = None  # the gateway holding the socket (None: joined before ids)


class MemberLeft(Aggregate.Event):
    session_id: str
    member_name: str


class MessagePosted(Aggregate.Event):
    message_id: str
    member_name: str
    text: str
    posted_at: Millis
    attachments: tuple[str, ...] = ()  # upload ids; not stored before uploads existed


class SystemMessagePosted(Aggregate.Event):
    """A notice by the room itself (a failed AI reply, a full AI queue)."""

    message_id: str
    text: str
    posted_at: Millis


class AlarmSet(Aggregate.Event):
    at: float  # seconds since the epoch


class AlarmCleared(Aggregate.Event):
    pass


class Expired(Aggregate.Event):
    """A private room nobody joined in time: it is gone."""


# --- the AI reply's life: asked, sent to the context service, streamed, finished ---------------


class AiReplyRequested(Aggregate.Event):
    reply_id: str
    user_id: str  # whose context answers, and whose quota pays
    asker: str
    question: str
    requested_at: Millis


class AiReplyDispatched(Aggregate.Event):
    reply_id: str
    deadline: float  # it must start streaming by then


class AiReplyStarted(Aggregate.Event):
    reply_id: str
    asker: str
    model: str
    label: str
    deadline: float  # it must finish by then
    alive_until: float | None = None  # streaming with no sign of life past then: it failed


class AiReplyAlive(Aggregate.Event):
    reply_id: str
    until: float


class AiReplyChunk(Aggregate.Event):
    reply_id: str
    offset: int
    text: str


class AiReplyCompleted(Aggregate.Event):
    reply_id: ReplyId
    user_id: UserId
    text: str
    posted_at: Millis
    prompt_tokens: Tokens
    output_tokens: Tokens


class AiReplyFailed(Aggregate.Event):
    """The reply ended early; `text` is what was streamed, marked incomplete ('' if none)."""

    reply_id: ReplyId
    user_id: UserId
    reason: str
    text: str
    posted_at: Millis
    prompt_tokens: Tokens
    output_tokens: Tokens
    provider_called: bool


ROOM_EVENTS: tuple[type[Aggregate.Event], ...] = (
    Created, MemberJoined, MemberLeft, MessagePosted, SystemMessagePosted,
    AlarmSet, AlarmCleared, Expired,
    AiReplyRequested, AiReplyDispatched, AiReplyStarted, AiReplyAlive, AiReplyChunk,
    AiReplyCompleted, AiReplyFailed,
)
BY_NAME: dict[str, type[Aggregate.Event]] = {cls.__name__: cls for cls in ROOM_EVENTS}

_ENVELOPE = {f.name for f in dataclasses.fields(Aggregate.Created)}  # id, version, time, topic


def stored_fields(cls: type[Aggregate.Event]) -> list[dataclasses.Field]:
    """The fields an event of `cls` stores besides its envelope (id, version, time)."""
    return [f for f in dataclasses.fields(cls) if f.name not in _ENVELOPE]
