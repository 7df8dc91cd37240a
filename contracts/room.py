"""The room object's commands, replies and broadcasts."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, TypeAdapter

from contracts.common import Command, Contract, ErrorReply

MAX_NAME_LENGTH = 32
MAX_MESSAGE_LENGTH = 256
HISTORY_LENGTH = 100

SessionId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
MemberName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
MessageText = Annotated[str, Field(max_length=MAX_MESSAGE_LENGTH)]


class ChatMessage(Contract):
    id: str = Field(description="The id of the command that posted it.")
    name: str = Field(examples=["alice"])
    message: str = Field(examples=["hello"])
    timestamp: int = Field(description="ms since the epoch, strictly increasing per room")


# --- commands: gateway -> cmd.room.<name> -------------------------------------------------


class CreatePrivateRoom(Command):
    """Create the private room whose key is a new 64-hex id."""

    type: Literal["create_private"] = "create_private"


class GetRoom(Command):
    """Read who is present and the last messages; appends nothing."""

    type: Literal["get"] = "get"


class JoinRoom(Command):
    type: Literal["join"] = "join"
    session_id: SessionId
    name: MemberName


class PostMessage(Command):
    type: Literal["post"] = "post"
    session_id: SessionId
    text: MessageText


class LeaveRoom(Command):
    type: Literal["leave"] = "leave"
    session_id: SessionId


RoomCommand = Annotated[
    Union[CreatePrivateRoom, GetRoom, JoinRoom, PostMessage, LeaveRoom],
    Field(discriminator="type"),
]
room_command = TypeAdapter(RoomCommand)


# --- replies ---------------------------------------------------------------------------------


class RoomState(Contract):
    """Reply to GetRoom: the room as of `version`."""

    type: Literal["state"] = "state"
    version: int = Field(description="The room's version; broadcasts above it are newer.")
    private: bool
    members: list[str] = Field(description="Names of the members present, in joining order.")
    messages: list[ChatMessage] = Field(description=f"The last {HISTORY_LENGTH}, oldest first.")


class Accepted(Contract):
    """The command's events are durably appended as of `version`."""

    type: Literal["accepted"] = "accepted"
    version: int
    message: ChatMessage | None = None


RoomReply = Annotated[Union[RoomState, Accepted, ErrorReply], Field(discriminator="type")]
room_reply = TypeAdapter(RoomReply)


# --- broadcasts: room owner -> out.room.<name> ------------------------------------------------


class MemberJoined(Contract):
    type: Literal["joined"] = "joined"
    version: int
    name: str


class MessagePosted(Contract):
    type: Literal["message"] = "message"
    version: int
    message: ChatMessage


class MemberQuit(Contract):
    type: Literal["quit"] = "quit"
    version: int
    name: str


RoomUpdate = Annotated[Union[MemberJoined, MessagePosted, MemberQuit], Field(discriminator="type")]
room_update = TypeAdapter(RoomUpdate)
