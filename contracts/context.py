"""The context objects' commands and replies: one object per user (`context`, keyed by user id).

A context holds the user's AI settings and their recent exchanges with the AI; when a room
asks it to answer (`Ask`), it builds the window sent to the model and streams the reply back
into the room.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from contracts.client import ObjectClient
from contracts.common import Command, Contract, ErrorReply
from contracts.room import MAX_MESSAGE_LENGTH, ChatMessage

CONTEXT = "context"
MAX_EXCHANGES = 10  # the user's own recent exchanges kept (and offered to the window)
MAX_SYSTEM_PROMPT = 4000
ROOM_WINDOW = 30  # recent room messages a room sends along with a question

MAX_USER_ID = 128
GUEST_PREFIX = "guest:"
# A user id: a verified token's subject (an identity provider's, e.g. "auth0|5f1c...", or
# minted), or a guest id the gateway issued. Printable, without spaces: it is shown in URLs.
USER_ID = re.compile(rf"^[!-~]{{1,{MAX_USER_ID}}}$")
GUEST_ID = re.compile(r"^guest:[A-Za-z0-9_-]{22}$")

UserId = Annotated[str, Field(min_length=1, max_length=MAX_USER_ID)]
ModelName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.\-]{0,63}$", examples=["gemini-2.5-flash"])]
Language = Annotated[
    str, Field(pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8}){0,3}$", examples=["en", "pt-BR"])
]


def new_guest_id() -> str:
    """A new guest's user id: 128 random bits (`guest:` and 22 URL-safe characters)."""
    return GUEST_PREFIX + secrets.token_urlsafe(16)


def is_guest_id(user_id: str) -> bool:
    return user_id.startswith(GUEST_PREFIX)


def user_id_problem(user_id: str) -> str | None:
    """Why `user_id` cannot be a user's id (a token's subject, or a guest id), or None."""
    if is_guest_id(user_id):
        return None if GUEST_ID.match(user_id) else "a guest id is guest: and 22 of A-Z a-z 0-9 _ -"
    if not USER_ID.match(user_id):
        return f"a user id is 1-{MAX_USER_ID} printable ASCII characters without spaces"
    return None


def guest_user(name: str) -> str:
    """The user id rooms fall back on for a post without one (older gateways): `guest:<name>`.
    Gateways now send every socket's own identity; no guest id the gateway issues looks so."""
    return f"{GUEST_PREFIX}{name}"


class ContextSettings(Contract):
    """A user's AI settings; an unset field takes the service's default."""

    model: ModelName | None = Field(None, description="the model to answer with (unset: the service's default)", examples=['gemini-2.5-flash'])
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="sampling temperature, 0 to 2 (unset: the provider's default)", examples=[0.7])
    system_prompt: str | None = Field(None, max_length=MAX_SYSTEM_PROMPT, description='instructions the AI gets before every question', examples=['Answer briefly.'])
    language: Language | None = Field(None, description="Answer in this language (BCP 47).", examples=['en'])


class Exchange(Contract):
    reply_id: str = Field(description="the AI reply's id", examples=['9b2d1c3e-77aa-4f10-8c55-6e0f1a2b3c4d'])
    room: str = Field(description='the room it was asked in', examples=['lobby'])
    question: str = Field(description='the question asked', examples=['what is a durable object?'])
    answer: str = Field(description="the AI's answer", examples=['A durable object is a single-threaded object with its own storage.'])


# --- commands: -> cmd.context.<user id> ------------------------------------------------------


class GetContext(Command):
    type: Literal["get"] = "get"


class PutSettings(Command):
    """Replace the user's settings (PUT semantics: a field left out goes back to default)."""

    type: Literal["put"] = "put"
    settings: ContextSettings


class Ask(Command):
    """A room asks this user's context to answer `question` as reply `reply_id`."""

    type: Literal["ask"] = "ask"
    room: str = Field(min_length=1, max_length=64)
    reply_id: str = Field(min_length=1, max_length=64)
    asker: str
    question: str = Field(min_length=1, max_length=MAX_MESSAGE_LENGTH)
    room_messages: list[ChatMessage] = Field(
        default_factory=list, max_length=ROOM_WINDOW, description="Recent messages, oldest first."
    )
    attachments: list[str] = Field(
        default_factory=list, max_length=8, description="Upload ids the question came with."
    )


class RecordExchange(Command):
    """A reply finished: remember the question and answer for the user's next windows."""

    type: Literal["record"] = "record"
    exchange: Exchange


ContextCommand = Annotated[
    GetContext | PutSettings | Ask | RecordExchange, Field(discriminator="type")
]
context_command = TypeAdapter(ContextCommand)


# --- replies -----------------------------------------------------------------------------------


class ContextView(Contract):
    """The user's context: settings as stored (unset: the service's default) and recent exchanges."""

    type: Literal["context"] = Field("context", description="the reply's kind: a user's context", examples=['context'])
    user_id: str = Field(description="the user's id", examples=['guest:Q2hhdEd1ZXN0MDAwMDAwMA'])
    version: int = Field(description="the context's version (its events so far)", examples=[3])
    settings: ContextSettings = Field(description="the user's settings as stored", examples=[{'model': 'gemini-2.5-flash', 'temperature': 0.7, 'system_prompt': None, 'language': 'en'}])
    exchanges: list[Exchange] = Field(description="Oldest first.", examples=[[]])


class AskAccepted(Contract):
    type: Literal["ask_accepted"] = "ask_accepted"
    duplicate: bool = Field(description="This reply id was asked before; nothing new started.")


ContextReply = Annotated[ContextView | AskAccepted | ErrorReply, Field(discriminator="type")]
context_reply = TypeAdapter(ContextReply)


class ContextClient(ObjectClient[ContextReply]):
    """Sends commands to users' context objects (`cmd.context.<user id>`)."""

    kind = CONTEXT
    replies = context_reply
