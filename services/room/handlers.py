"""The room's command handlers: validate, call the Room aggregate, say what to reply and broadcast."""

from __future__ import annotations

import time
from functools import singledispatchmethod

from pydantic import BaseModel

from contracts.common import ErrorCode, ErrorReply
from contracts.keys import is_private_room_id
from contracts.room import (
    Accepted,
    ChatMessage,
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
from contracts.subjects import ROOM
from services.room.domainmodel import (
    AlreadyExists,
    MessageTooLong,
    NameTooLong,
    NoSuchRoom,
    NotAMember,
    Room,
    RoomError,
)
ERROR_CODES = {
    NotAMember: ErrorCode.NOT_MEMBER,
    NameTooLong: ErrorCode.TOO_LONG,
    MessageTooLong: ErrorCode.TOO_LONG,
    AlreadyExists: ErrorCode.EXISTS,
    NoSuchRoom: ErrorCode.NOT_FOUND,
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class RoomBehaviour:
    """How the room service hosts Room objects."""

    kind = ROOM
    aggregate_type = Room

    def __init__(self, private_room_ttl: float = 86_400.0) -> None:
        self.private_room_ttl = private_room_ttl

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
        match event:
            case Room.MemberJoined():
                return MemberJoined(version=event.originator_version, name=event.member_name)
            case Room.MemberLeft():
                return MemberQuit(version=event.originator_version, name=event.member_name)
            case Room.MessagePosted():
                return MessagePosted(
                    version=event.originator_version,
                    message=ChatMessage(
                        id=event.message_id,
                        name=event.member_name,
                        message=event.text,
                        timestamp=event.posted_at,
                    ),
                )
        return None

    def alarm_time(self, room: Room) -> float | None:
        return room.alarm_at

    def on_alarm(self, key: str, room: Room | None, at: float) -> tuple[Room | None, BaseModel]:
        """The room's only alarm today: expire a private room nobody joined in time."""
        if room is not None:
            room.alarm_due(at)
        return room, Accepted(version=room.version if room else 0)

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
        posted = room.post(str(command.command_id), command.session_id, command.text, now_ms())
        # None: a retry of a post already applied. Once is enough; if the first attempt's
        # broadcast was lost in a crash, the next owner re-broadcasts it when it loads the room.
        message = ChatMessage(**posted) if posted is not None else None
        return room, Accepted(version=room.version, message=message)

    @_decide.register
    def _(self, command: LeaveRoom, key: str, room: Room | None):
        room = self._existing(key, room)
        room.leave(command.session_id)
        return room, Accepted(version=room.version)
