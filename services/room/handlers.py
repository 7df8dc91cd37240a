"""The room's command handlers: validate, call the Room aggregate, say what to reply and broadcast."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import singledispatchmethod

from pydantic import BaseModel

from contracts.common import ErrorCode, ErrorReply
from contracts.keys import is_private_room_id
from contracts.context import CONTEXT, ROOM_WINDOW, Ask, context_reply
from contracts.room import (
    Accepted,
    AiChunk,
    AiFailed,
    AiQueued,
    AiReplyView,
    AiStarted,
    AppendAiReply,
    ChatMessage,
    CompleteAiReply,
    FailAiReply,
    StartAiReply,
    CreatePrivateRoom,
    GetRoom,
    JoinRoom,
    LeaveRoom,
    MemberJoined,
    MemberQuit,
    MessagePosted,
    PostMessage,
    RoomState,
    room_command,
)
from contracts.room import AI_NAME, SYSTEM_NAME
from contracts.subjects import ROOM
from services.runtime.client import ObjectClient
from services.room.domainmodel import (
    AiReplyConflict,
    AlreadyExists,
    NameReserved,
    NoSuchAiReply,
    MessageTooLong,
    NameTooLong,
    NoSuchRoom,
    NotAMember,
    Room,
    RoomError,
)
from services.room.aireply import AiDeadlines, AiStatus

log = logging.getLogger(__name__)

ERROR_CODES = {
    NotAMember: ErrorCode.NOT_MEMBER,
    NameReserved: ErrorCode.BAD_REQUEST,
    NoSuchAiReply: ErrorCode.NOT_FOUND,
    AiReplyConflict: ErrorCode.BAD_REQUEST,
    NameTooLong: ErrorCode.TOO_LONG,
    MessageTooLong: ErrorCode.TOO_LONG,
    AlreadyExists: ErrorCode.EXISTS,
    NoSuchRoom: ErrorCode.NOT_FOUND,
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ai_message(event) -> ChatMessage:
    """The message an AI reply ends as (completed, or failed with its partial text)."""
    return ChatMessage(
        id=event.reply_id, name=AI_NAME, message=event.text, timestamp=event.posted_at, kind="ai"
    )


class RoomBehaviour:
    """How the room service hosts Room objects."""

    kind = ROOM
    aggregate_type = Room

    def __init__(
        self,
        private_room_ttl: float = 86_400.0,
        ai_start_timeout: float = 30.0,
        ai_max_duration: float = 180.0,
        ai_stall_timeout: float | None = 45.0,
    ) -> None:
        self.private_room_ttl = private_room_ttl
        self.ai_start_timeout = ai_start_timeout  # dispatched -> started, else it fails
        self.ai_max_duration = ai_max_duration  # started -> finished, else it fails
        self.ai_stall_timeout = ai_stall_timeout  # streaming with no append that long: fails
        self.ai_deadlines = AiDeadlines(ai_start_timeout, ai_max_duration, ai_stall_timeout)
        self._asking: set[asyncio.Task] = set()

    def parse(self, data: bytes):
        return room_command.validate_json(data)

    def decide(self, key: str, room: Room | None, command) -> tuple[Room | None, BaseModel]:
        try:
            return self._decide(command, key, room)
        except RoomError as exc:
            code = ERROR_CODES.get(type(exc), ErrorCode.BAD_REQUEST)
            return room, ErrorReply(code=code, message=str(exc))

    def broadcast(self, event) -> BaseModel | None:
        """What sockets in the room are told of a stored event."""
        version = event.originator_version
        match event:
            case Room.MemberJoined():
                return MemberJoined(version=version, name=event.member_name)
            case Room.MemberLeft():
                return MemberQuit(version=version, name=event.member_name)
            case Room.MessagePosted():
                message = ChatMessage(
                    id=event.message_id, name=event.member_name, message=event.text,
                    timestamp=event.posted_at,
                )
                return MessagePosted(version=version, message=message)
            case Room.AiReplyRequested():
                return AiQueued(
                    version=version, id=event.reply_id, asker=event.asker, question=event.question
                )
            case Room.AiReplyStarted():
                return AiStarted(
                    version=version, id=event.reply_id, asker=event.asker, model=event.model,
                    label=event.label,
                )
            case Room.AiReplyChunk():
                return AiChunk(version=version, id=event.reply_id, offset=event.offset, text=event.text)
            case Room.AiReplyCompleted():
                return MessagePosted(version=version, message=ai_message(event))
            case Room.AiReplyFailed():
                partial = ai_message(event) if event.text else None
                return AiFailed(version=version, id=event.reply_id, reason=event.reason, message=partial)
            case Room.SystemMessagePosted():
                message = ChatMessage(
                    id=event.message_id, name=SYSTEM_NAME, message=event.text,
                    timestamp=event.posted_at, kind="system",
                )
                return MessagePosted(version=version, message=message)
        return None

    def alarm_time(self, room: Room) -> float | None:
        return room.wake_at()

    def on_alarm(self, key: str, room: Room | None, at: float) -> tuple[Room | None, BaseModel]:
        """Expire a private room nobody joined in time; fail an AI reply past its deadline."""
        if room is not None:
            room.alarm_due(at, now=time.time(), now_ms=now_ms(), deadlines=self.ai_deadlines)
        return room, Accepted(version=room.version if room else 0)

    async def after_commit(self, nc, key: str, room: Room | None, events) -> None:
        """A question that reached the head of the queue is sent to the asker's context."""
        for event in events:
            if isinstance(event, Room.AiReplyDispatched) and room is not None:
                reply = room.ai.get(event.reply_id)
                if reply is None or reply.status is not AiStatus.DISPATCHED:
                    continue  # answered or failed since (a reload says old commits again)
                ask = Ask(
                    room=key,
                    reply_id=reply.id,
                    asker=reply.asker,
                    question=reply.question,
                    room_messages=[ChatMessage(**m) for m in room.messages[-ROOM_WINDOW:]],
                )
                task = asyncio.create_task(self._ask(nc, reply.user_id, ask))
                self._asking.add(task)
                task.add_done_callback(self._asking.discard)

    async def _ask(self, nc, user_id: str, ask: Ask) -> None:
        # Retried (same command id) for half the start timeout; if the context service never
        # takes it, the room's alarm fails the reply at the start deadline.
        client = ObjectClient(nc, CONTEXT, context_reply, timeout=self.ai_start_timeout / 2)
        reply = await client.send(user_id, ask)
        if isinstance(reply, ErrorReply):
            log.warning("context %s refused reply %s: %s", user_id, ask.reply_id, reply.message)

    @staticmethod
    def _existing(key: str, room: Room | None) -> Room:
        """The room to act on: a public room opens on first use, a private one must exist."""
        if room is not None:
            room.check_open()
            return room
        if is_private_room_id(key):
            raise NoSuchRoom("No such room.")
        return Room.open_public(key)

    @singledispatchmethod
    def _decide(self, command, key: str, room: Room | None) -> tuple[Room | None, BaseModel]:
        raise TypeError(f"no handler for {type(command).__name__}")

    @_decide.register
    def _(self, command: CreatePrivateRoom, key: str, room: Room | None):
        if room is not None:
            raise AlreadyExists("The room already exists.")
        room = Room.create_private(key, expire_unused_at=time.time() + self.private_room_ttl)
        return room, Accepted(version=room.version)

    @_decide.register
    def _(self, command: GetRoom, key: str, room: Room | None):
        if room is None and is_private_room_id(key):
            raise NoSuchRoom("No such room.")
        if room is not None:
            room.check_open()
        if room is None:  # a public room nobody has used yet: empty, and nothing appended
            return None, RoomState(version=0, private=False, members=[], messages=[])
        state = RoomState(
            version=room.version,
            private=room.private,
            members=list(room.members.values()),
            messages=[ChatMessage(**m) for m in room.messages],
            ai=[
                AiReplyView(
                    id=r.id, asker=r.asker, question=r.question, status=r.status.value,
                    model=r.model, label=r.label, text=r.text,
                )
                for r in room.ai.values()
            ],
        )
        return room, state

    @_decide.register
    def _(self, command: JoinRoom, key: str, room: Room | None):
        room = self._existing(key, room)
        room.join(command.session_id, command.name)
        return room, Accepted(version=room.version)

    @_decide.register
    def _(self, command: PostMessage, key: str, room: Room | None):
        room = self._existing(key, room)
        posted = room.post(
            str(command.command_id), command.session_id, command.text, now_ms=now_ms(),
            now=time.time(), deadlines=self.ai_deadlines, user_id=command.user_id,
        )
        # None: a retry of a post already applied. Once is enough; if the first attempt's
        # broadcast was lost in a crash, the next owner re-broadcasts it when it loads the room.
        message = ChatMessage(**posted) if posted is not None else None
        return room, Accepted(version=room.version, message=message)

    @_decide.register
    def _(self, command: LeaveRoom, key: str, room: Room | None):
        room = self._existing(key, room)
        room.leave(command.session_id)
        return room, Accepted(version=room.version)

    @_decide.register
    def _(self, command: StartAiReply, key: str, room: Room | None):
        room = self._existing(key, room)
        room.start_ai(
            command.reply_id, command.model, command.label, now=time.time(),
            deadlines=self.ai_deadlines,
        )
        return room, Accepted(version=room.version)

    @_decide.register
    def _(self, command: AppendAiReply, key: str, room: Room | None):
        room = self._existing(key, room)
        room.append_ai(
            command.reply_id, command.offset, command.text, now=time.time(),
            deadlines=self.ai_deadlines,
        )
        return room, Accepted(version=room.version)

    @_decide.register
    def _(self, command: CompleteAiReply, key: str, room: Room | None):
        room = self._existing(key, room)
        message = room.complete_ai(
            command.reply_id, command.length, command.prompt_tokens, command.output_tokens,
            now_ms=now_ms(), now=time.time(), deadlines=self.ai_deadlines,
        )
        return room, Accepted(
            version=room.version, message=ChatMessage(**message) if message else None
        )

    @_decide.register
    def _(self, command: FailAiReply, key: str, room: Room | None):
        room = self._existing(key, room)
        room.fail_ai(
            command.reply_id, command.reason, command.message, command.prompt_tokens,
            command.output_tokens, now_ms=now_ms(), now=time.time(), deadlines=self.ai_deadlines,
        )
        return room, Accepted(version=room.version)
