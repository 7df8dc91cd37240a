"""The room kind: one handler per room command, what the room broadcasts, its alarm, and
the reaction that sends a question to the asker's context."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import BaseModel

from contracts.common import ErrorCode, ErrorReply
from contracts.context import ROOM_WINDOW, Ask, ContextClient
from contracts.keys import is_private_room_id
from contracts.room import (
    AI_NAME,
    SYSTEM_NAME,
    Accepted,
    AiChunk,
    AiFailed,
    AiQueued,
    AiReplyView,
    AiStarted,
    AppendAiReply,
    ChatMessage,
    CompleteAiReply,
    CreatePrivateRoom,
    DropGateway,
    FailAiReply,
    GetRoom,
    JoinRoom,
    LeaveRoom,
    MemberJoined,
    MemberQuit,
    MessagePosted,
    MessagesPosted,
    PostMessage,
    PostMessages,
    RoomCommand,
    RoomState,
    StartAiReply,
    post_message_id,
)
from contracts.subjects import ROOM
from services.room.aireply import AiDeadlines, AiStatus
from services.room.domainmodel import Room, reply_id_of
from services.room.errors import (
    AiReplyConflict,
    AlreadyExists,
    MessageTooLong,
    NameReserved,
    NameTooLong,
    NoSuchAiReply,
    NoSuchRoom,
    NotAMember,
    RoomError,
)
from services.runtime.kind import Committed, DueAlarm, ObjectContext, ObjectKind, Outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoomDeps:
    """The room's settings, and the client it asks contexts with."""

    contexts: ContextClient
    deadlines: AiDeadlines  # of an AI reply: to start, to finish, to show signs of life
    private_room_ttl: float = 86_400.0


Ctx = ObjectContext[RoomDeps]


def ai_message(event) -> ChatMessage:
    """The message an AI reply ends as (completed, or failed with its partial text)."""
    return ChatMessage(
        id=event.reply_id, name=AI_NAME, message=event.text, timestamp=event.posted_at, kind="ai"
    )


def broadcast(event) -> BaseModel | None:
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
                timestamp=event.posted_at, attachments=list(event.attachments),
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


room = ObjectKind[Room, RoomDeps](
    ROOM,
    RoomCommand,
    describe="a chat room",
    errors={
        NotAMember: ErrorCode.NOT_MEMBER,
        NameReserved: ErrorCode.BAD_REQUEST,
        NoSuchAiReply: ErrorCode.NOT_FOUND,
        AiReplyConflict: ErrorCode.BAD_REQUEST,
        NameTooLong: ErrorCode.TOO_LONG,
        MessageTooLong: ErrorCode.TOO_LONG,
        AlreadyExists: ErrorCode.EXISTS,
        NoSuchRoom: ErrorCode.NOT_FOUND,
        RoomError: ErrorCode.BAD_REQUEST,
    },
    broadcast=broadcast,
    wake_at=Room.wake_at,
)


def existing(state: Room | None, ctx: Ctx) -> Room:
    """The room to act on: a public room opens on first use, a private one must exist."""
    if state is not None:
        state.check_open()
        return state
    if is_private_room_id(ctx.key):
        raise NoSuchRoom("No such room.")
    return Room.open_public(ctx.key)


def accepted(state: Room, message: dict | None = None) -> Outcome:
    return Outcome(state, Accepted(version=state.version, message=ChatMessage(**message) if message else None))


@room.handles(CreatePrivateRoom)
def create_private(command: CreatePrivateRoom, state: Room | None, ctx: Ctx) -> Outcome:
    if state is not None:
        raise AlreadyExists("The room already exists.")
    state = Room.create_private(ctx.key, expire_unused_at=ctx.now() + ctx.deps.private_room_ttl)
    return accepted(state)


@room.handles(GetRoom)
def get_room(command: GetRoom, state: Room | None, ctx: Ctx) -> Outcome:
    if state is None:
        if is_private_room_id(ctx.key):
            raise NoSuchRoom("No such room.")
        # A public room nobody has used yet: empty, and nothing appended.
        return Outcome(None, RoomState(version=0, private=False, members=[], messages=[]))
    state.check_open()
    return Outcome(
        state,
        RoomState(
            version=state.version,
            private=state.private,
            members=list(state.members.values()),
            messages=[ChatMessage(**m) for m in state.messages],
            ai=[
                AiReplyView(
                    id=r.id, asker=r.asker, question=r.question, status=r.status.value,
                    model=r.model, label=r.label, text=r.text,
                )
                for r in state.ai.values()
            ],
        ),
    )


@room.handles(JoinRoom)
def join(command: JoinRoom, state: Room | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    state.join(command.session_id, command.name, command.gateway)
    return accepted(state)


@room.handles(DropGateway)
def drop_gateway(command: DropGateway, state: Room | None, ctx: Ctx) -> Outcome:
    """A gateway is gone: its members leave. A room never used, or gone, has none."""
    if state is None or state.expired:
        return Outcome(state, Accepted(version=state.version if state else 0))
    state.drop_gateway(command.gateway)
    return accepted(state)


@room.handles(PostMessage)
def post(command: PostMessage, state: Room | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    posted = state.post(
        str(command.command_id), command.session_id, command.text, now_ms=ctx.now_ms(),
        now=ctx.now(), deadlines=ctx.deps.deadlines, user_id=command.user_id,
        attachments=tuple(command.attachments),
    )
    # None: a retry of a post already applied. Once is enough; if the first attempt's
    # broadcast was lost in a crash, the next owner re-broadcasts it when it loads the room.
    return accepted(state, posted)


@room.handles(PostMessages)
def post_many(command: PostMessages, state: Room | None, ctx: Ctx) -> Outcome:
    """Each text as `post` would post it, in order, up to the first the room refuses."""
    state = existing(state, ctx)
    posted = 0
    refused = None
    for index, text in enumerate(command.texts):
        try:
            state.post(
                post_message_id(str(command.command_id), index), command.session_id, text,
                now_ms=ctx.now_ms(), now=ctx.now(), deadlines=ctx.deps.deadlines,
                user_id=command.user_id, attachments=command.attachments_of(index),
            )
        except RoomError as exc:  # raised before the text changed anything
            refused = ErrorReply(code=room.error_code(exc) or ErrorCode.BAD_REQUEST, message=str(exc))
            break
        posted += 1
    # Not always the last event: an AI question ends with events nobody is shown.
    shown = next(
        (e.originator_version for e in reversed(state.pending_events) if broadcast(e) is not None), 0
    )
    return Outcome(
        state, MessagesPosted(version=state.version, posted=posted, refused=refused, shown=shown)
    )


@room.handles(LeaveRoom)
def leave(command: LeaveRoom, state: Room | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    state.leave(command.session_id)
    return accepted(state)


@room.handles(StartAiReply)
def start_ai(command: StartAiReply, state: Room | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    state.start_ai(
        command.reply_id, command.model, command.label, now=ctx.now(), deadlines=ctx.deps.deadlines
    )
    return accepted(state)


@room.handles(AppendAiReply)
def append_ai(command: AppendAiReply, state: Room | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    state.append_ai(
        command.reply_id, command.offset, command.text, now=ctx.now(), deadlines=ctx.deps.deadlines
    )
    return accepted(state)


@room.handles(CompleteAiReply)
def complete_ai(command: CompleteAiReply, state: Room | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    message = state.complete_ai(
        command.reply_id, command.length, command.prompt_tokens, command.output_tokens,
        now_ms=ctx.now_ms(), now=ctx.now(), deadlines=ctx.deps.deadlines,
    )
    return accepted(state, message)


@room.handles(FailAiReply)
def fail_ai(command: FailAiReply, state: Room | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    state.fail_ai(
        command.reply_id, command.reason, command.message, command.prompt_tokens,
        command.output_tokens, now_ms=ctx.now_ms(), now=ctx.now(), deadlines=ctx.deps.deadlines,
    )
    return accepted(state)


@room.handles(DueAlarm)
def alarm_due(alarm: DueAlarm, state: Room | None, ctx: Ctx) -> Outcome:
    """Expire a private room nobody joined in time; fail an AI reply past its deadline."""
    if state is not None:
        state.alarm_due(alarm.at, now=ctx.now(), now_ms=ctx.now_ms(), deadlines=ctx.deps.deadlines)
    return Outcome(state, Accepted(version=state.version if state else 0))


@room.after_commit
async def ask_context(committed: Committed, state: Room | None, ctx: Ctx) -> None:
    """A question that reached the head of the queue is sent to the asker's context."""
    for event in committed.events:
        if not isinstance(event, Room.AiReplyDispatched) or state is None:
            continue
        reply = state.ai.get(event.reply_id)
        if reply is None or reply.status is not AiStatus.DISPATCHED:
            continue  # answered or failed since (a reload says old commits again)
        ask = Ask(
            room=ctx.key,
            reply_id=reply.id,
            asker=reply.asker,
            question=reply.question,
            room_messages=[ChatMessage(**m) for m in state.messages[-ROOM_WINDOW:]],
            attachments=asked_with(state, reply.id),
        )
        ctx.spawn(send_ask(ctx.deps.contexts, reply.user_id, ask), f"ask {ask.reply_id}")


def asked_with(state: Room, reply_id: str) -> list[str]:
    """The attachments of the message that asked reply `reply_id`."""
    for message in reversed(state.messages):
        if reply_id_of(message["id"]) == reply_id:
            return list(message.get("attachments", ()))
    return []


async def send_ask(contexts: ContextClient, user_id: str, ask: Ask) -> None:
    # Retried (same command id) for half the start timeout; if the context service never
    # takes it, the room's alarm fails the reply at the start deadline.
    reply = await contexts.send(user_id, ask)
    if isinstance(reply, ErrorReply):
        log.warning("context %s refused reply %s: %s", user_id, ask.reply_id, reply.message)
