"""The room object's commands, replies and broadcasts."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal
from uuid import NAMESPACE_URL, uuid5

from pydantic import AfterValidator, Field, TypeAdapter, model_validator

from contracts.client import ObjectClient
from contracts.common import Command, Contract, ErrorReply
from contracts.gateways import GatewayId
from contracts.subjects import ROOM

MAX_NAME_LENGTH = 32
MAX_MESSAGE_LENGTH = 256
HISTORY_LENGTH = 100
# ... and at most this many characters in all (the newest message is always kept): AI replies
# are long, and a room's state travels whole in a NATS message (max_payload 1 MB) and in its
# snapshot. 100 chat messages of the demo's 256 characters fit easily.
HISTORY_CHARS = 64_000

# A message addressed to the AI starts with one of these (case-insensitive), then a space.
AI_PREFIXES = ("@ai", "/ai")
AI_NAME = "AI"  # the author of AI replies
SYSTEM_NAME = "system"  # the author of the room's own notices (an AI reply failed, ...)
RESERVED_NAMES = frozenset({AI_NAME.casefold(), SYSTEM_NAME.casefold()})
ANONYMOUS = "anonymous"  # the name of a client that sends none (or an empty one), as in the demo
MAX_AI_REPLY_LENGTH = 32_000  # characters of one AI reply; the provider is cut off past it
MAX_AI_QUEUE = 8  # AI questions a room holds (one streaming, the rest waiting)
INCOMPLETE_MARK = " [incomplete]"


ROOM_NAMESPACE = uuid5(NAMESPACE_URL, "durachat:room")


def reply_id_of(message_id: str) -> str:
    """The id of the AI reply to message `message_id`: the same on every retry (and the id of
    the AI's message that answers it, so a client can pair the two)."""
    return str(uuid5(ROOM_NAMESPACE, f"ai-reply:{message_id}"))


def ai_question(text: str) -> str | None:
    """The question of a message addressed to the AI (`@ai ...` or `/ai ...`), else None."""
    head, _, rest = text.strip().partition(" ")
    if head.casefold() in AI_PREFIXES and rest.strip():
        return rest.strip()
    return None


# --- display names ----------------------------------------------------------------------------
#
# A display name is only a label (who someone is, is their identity: see services/gateway/
# identity.py), but it must not pose as the room's own voices nor break the lines it is shown
# on. Every check runs on the normalized name, and the name stored is the normalized one.

# Invisible characters: trimmed from both ends, and ignored when comparing with a reserved name.
_INVISIBLE = frozenset("\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c"
                       "\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\u3164\ufeff\uffa0")
# Characters that reorder or break the text around them: refused in a name, like controls.
_BREAKING = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Look-alikes (UTS #39 confusables) of the letters of the reserved names that NFKC and casefold
# leave alone: Cyrillic, Greek, Cherokee and Latin small capitals. "АІ" (Cyrillic) is "ai".
_LOOK_ALIKES = str.maketrans({
    **dict.fromkeys("аαɑᴀꭺ\u13aa", "a"),
    **dict.fromkeys("іιıɪӏΙіℹ\u13a5ǀ|", "i"),
    **dict.fromkeys("ѕꜱʂ\u13da\u13d5", "s"),
    **dict.fromkeys("уүγʏỿ\u13a9", "y"),
    **dict.fromkeys("тτᴛ\u13a2", "t"),
    **dict.fromkeys("еєεᴇ\u13ac", "e"),
    **dict.fromkeys("мᴍ\u13b7", "m"),
})


def normalize_name(raw: str) -> str:
    """A display name as stored and shown: NFKC, trimmed of spaces and invisible characters
    at both ends; an empty one is "anonymous", as in the demo."""
    name = unicodedata.normalize("NFKC", raw)
    trim = "".join(c for c in set(name) if c.isspace() or c in _INVISIBLE)
    return name.strip(trim) or ANONYMOUS


def is_blank(text: str) -> bool:
    """True when `text` shows nothing: only spaces and invisible characters (or nothing)."""
    return all(c.isspace() or c in _INVISIBLE for c in text)


def name_skeleton(name: str) -> str:
    """What `name` looks like, for comparing with the reserved names: NFKC, casefolded, without
    accents, spaces, punctuation and invisible characters, look-alike letters mapped to Latin."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", name).casefold())
    mapped = folded.translate(_LOOK_ALIKES)
    return "".join(c for c in mapped if c.isalnum() and not unicodedata.combining(c))


def is_reserved_name(name: str) -> bool:
    """True for "AI", "system" and their look-alikes (" AI ", "ＡＩ", "A.I.", "АІ", "ѕуѕтем")."""
    return name_skeleton(name) in RESERVED_NAMES


def name_problem(name: str) -> str | None:
    """Why a normalized name cannot be a member's, as the error frame says it; None if it can."""
    if len(name) > MAX_NAME_LENGTH:
        return "Name too long."
    if any(unicodedata.category(c) == "Cc" or c in _BREAKING for c in name):
        return "Names may not contain control characters (newlines, tabs, NUL, ...)."
    if is_reserved_name(name):
        return f"The name {name!r} is reserved; choose another."
    return None


def _member_name(name: str) -> str:
    if name != normalize_name(name):
        raise ValueError("a member name is normalized first (NFKC, trimmed)")
    if problem := name_problem(name):
        raise ValueError(problem)
    return name


SessionId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
MemberName = Annotated[
    str, Field(min_length=1, max_length=MAX_NAME_LENGTH), AfterValidator(_member_name)
]
MessageText = Annotated[str, Field(max_length=MAX_MESSAGE_LENGTH)]


MAX_ATTACHMENTS = 8  # uploads one message may carry
AttachmentId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]  # an upload id (contracts/upload.py)

MessageKind = Literal["user", "ai", "system"]
AiFailure = Literal[
    "timeout", "rate_limited", "blocked", "network", "cut", "server", "bad_request",
    "quota", "unavailable", "too_long",
]


class ChatMessage(Contract):
    id: str = Field(description="The id of the command that posted it (of an AI reply: its id).", examples=['5f0e7c1a-9d51-4b8e-a3f2-0c1d2e3f4a5b'])
    name: str = Field(examples=["alice"], description="the author's name (AI for AI replies, system for the room's notices)")
    message: str = Field(examples=["hello"], description='the text')
    timestamp: int = Field(description="ms since the epoch, strictly increasing per room", examples=[1764547200000])
    kind: MessageKind = Field("user", description='who wrote it: a user, the AI, or the room itself', examples=['user'])
    attachments: list[AttachmentId] = Field(
        default_factory=list, max_length=MAX_ATTACHMENTS, description="upload ids (/api/uploads/<id>)",
        examples=[[]],
    )


class AiReplyView(Contract):
    """An AI reply the room has not finished: waiting in the room's queue, or streaming."""

    id: str = Field(description="the reply's id", examples=['9b2d1c3e-77aa-4f10-8c55-6e0f1a2b3c4d'])
    asker: str = Field(description='who asked', examples=['alice'])
    question: str = Field(description='the question', examples=['what is a durable object?'])
    status: Literal["queued", "dispatched", "streaming"] = Field(description='where the reply is: queued, dispatched to the AI service, or streaming', examples=['streaming'])
    model: str | None = Field(None, description='the model answering, once started', examples=['gemini-2.5-flash'])
    label: str | None = Field(None, description="Who answers, e.g. 'Gemini' or 'offline AI'.", examples=['Gemini'])
    text: str = Field("", description="What was streamed so far (every chunk is stored).", examples=['A durable object is'])


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
    gateway: GatewayId | None = Field(
        None, description="The gateway holding the socket: its members leave if it dies."
    )


class PostMessage(Command):
    type: Literal["post"] = "post"
    session_id: SessionId
    text: MessageText
    user_id: str | None = Field(
        None,
        max_length=160,
        description="The poster's identity (a verified user id or a server-issued guest id): "
        "their AI context answers and their quota is charged. The gateway always sets it; "
        "the default guest:<name> is kept only for older callers.",
    )
    attachments: list[AttachmentId] = Field(
        default_factory=list, max_length=MAX_ATTACHMENTS,
        description="Finished uploads of this room (the gateway checked them).",
    )


MAX_POST_BATCH = 64  # texts one PostMessages carries (64 x 256 chars: far below max_payload)


class PostMessages(Command):
    """Several messages of one session, in order: the frames a socket sent while its previous
    command was in flight. Each text is posted as PostMessage would post it (its own event,
    broadcast and id: `post_message_id(command_id, index)`), all in one commit.

    The texts are applied in order up to the first one the room refuses; that one and those
    after it are not applied (the reply says how many were), so the sender can answer the
    refused frame at its position and send the rest again as a new command.
    """

    type: Literal["post_many"] = "post_many"
    session_id: SessionId
    texts: list[MessageText] = Field(min_length=1, max_length=MAX_POST_BATCH)
    attachments: list[list[AttachmentId]] = Field(
        default_factory=list, max_length=MAX_POST_BATCH,
        description="Each text's finished uploads, in order (as PostMessage's), or empty when "
        "no text has any.",
    )
    user_id: str | None = Field(
        None, max_length=160, description="Who is charged for AI questions (default: guest:<name>)."
    )

    @model_validator(mode="after")
    def _one_list_per_text(self) -> PostMessages:
        if self.attachments and len(self.attachments) != len(self.texts):
            raise ValueError("attachments: one list per text, or none at all")
        if any(len(a) > MAX_ATTACHMENTS for a in self.attachments):
            raise ValueError(f"attachments: at most {MAX_ATTACHMENTS} per text")
        return self

    def attachments_of(self, index: int) -> tuple[str, ...]:
        return tuple(self.attachments[index]) if self.attachments else ()


def post_message_id(command_id: str, index: int) -> str:
    """The id of the `index`th message of a PostMessages: the same on every retry."""
    return str(uuid5(NAMESPACE_URL, f"durachat:post:{command_id}:{index}"))


class LeaveRoom(Command):
    type: Literal["leave"] = "leave"
    session_id: SessionId


class StartAiReply(Command):
    """The context service is about to stream reply `reply_id` (the head of the AI queue)."""

    type: Literal["ai_start"] = "ai_start"
    reply_id: str = Field(max_length=64)
    model: str = Field(max_length=64)
    label: str = Field(max_length=64)


class AppendAiReply(Command):
    """Text the provider streamed, starting at character `offset` of the reply."""

    type: Literal["ai_append"] = "ai_append"
    reply_id: str = Field(max_length=64)
    offset: int = Field(ge=0)
    text: str = Field(min_length=1, max_length=MAX_AI_REPLY_LENGTH)


class CompleteAiReply(Command):
    """The provider finished; `length` is the reply's length in characters (all appended)."""

    type: Literal["ai_complete"] = "ai_complete"
    reply_id: str = Field(max_length=64)
    length: int = Field(ge=0)
    prompt_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)


class FailAiReply(Command):
    """The reply cannot be (fully) given; what was streamed is kept, marked incomplete."""

    type: Literal["ai_fail"] = "ai_fail"
    reply_id: str = Field(max_length=64)
    reason: AiFailure
    message: str = Field(max_length=500, description="Said to the room, in words for users.")
    prompt_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)


class DropGateway(Command):
    """Gateway `gateway` is gone: every member that joined through it leaves (quit)."""

    type: Literal["drop_gateway"] = "drop_gateway"
    gateway: GatewayId


RoomCommand = Annotated[
    CreatePrivateRoom | GetRoom | JoinRoom | PostMessage | PostMessages | LeaveRoom | DropGateway
    | StartAiReply | AppendAiReply | CompleteAiReply | FailAiReply,
    Field(discriminator="type"),
]
room_command = TypeAdapter(RoomCommand)


# --- replies ---------------------------------------------------------------------------------


class RoomState(Contract):
    """Reply to GetRoom: the room as of `version`."""

    type: Literal["state"] = Field("state", description="the reply's kind: the room's state", examples=['state'])
    version: int = Field(description="The room's version; broadcasts above it are newer.", examples=[42])
    private: bool = Field(description='whether the room is private (a 64-hex id, never listed)', examples=[False])
    members: list[str] = Field(description="Names of the members present, in joining order.", examples=[['alice', 'bob']])
    messages: list[ChatMessage] = Field(examples=[[{'id': '5f0e7c1a-9d51-4b8e-a3f2-0c1d2e3f4a5b', 'name': 'alice', 'message': 'hello', 'timestamp': 1764547200000, 'kind': 'user'}]],
        description=f"The last {HISTORY_LENGTH} (at most {HISTORY_CHARS:,} characters), oldest first."
    )
    ai: list[AiReplyView] = Field(examples=[[]],
        default_factory=list, description="AI replies not finished yet, in queue order."
    )


class Accepted(Contract):
    """The command's events are durably appended as of `version`."""

    type: Literal["accepted"] = "accepted"
    version: int
    message: ChatMessage | None = None


class MessagesPosted(Contract):
    """Reply to PostMessages: the first `posted` texts are durably appended as of `version`;
    `refused`, when set, is why the next one was not (it and the rest were not applied)."""

    type: Literal["posted"] = "posted"
    version: int
    posted: int = Field(ge=0)
    refused: ErrorReply | None = None
    shown: int = Field(
        0, description="The version of the last broadcast the posted texts caused (0: none); "
        "a sender that has seen it has seen them all."
    )


RoomReply = Annotated[
    RoomState | Accepted | MessagesPosted | ErrorReply, Field(discriminator="type")
]
room_reply = TypeAdapter(RoomReply)


class RoomClient(ObjectClient[RoomReply]):
    """Sends commands to room objects (`cmd.room.<name>`)."""

    kind = ROOM
    replies = room_reply


# --- broadcasts: room owner -> out.room.<name> ------------------------------------------------


class MemberJoined(Contract):
    type: Literal["joined"] = Field("joined", description="the update's kind: someone joined", examples=['joined'])
    version: int = Field(description="the room's version after this update", examples=[7])
    name: str = Field(description="the member's name", examples=['alice'])


class MessagePosted(Contract):
    type: Literal["message"] = Field("message", description="the update's kind: a message was posted", examples=['message'])
    version: int = Field(description="the room's version after this update", examples=[8])
    message: ChatMessage = Field(description='the message posted', examples=[{'id': '5f0e7c1a-9d51-4b8e-a3f2-0c1d2e3f4a5b', 'name': 'alice', 'message': 'hello', 'timestamp': 1764547200000, 'kind': 'user'}])


class MemberQuit(Contract):
    type: Literal["quit"] = Field("quit", description="the update's kind: someone left", examples=['quit'])
    version: int = Field(description="the room's version after this update", examples=[9])
    name: str = Field(description="the member's name", examples=['alice'])


class AiQueued(Contract):
    """Someone asked the AI; the reply waits its turn in the room's queue."""

    type: Literal["ai_queued"] = Field("ai_queued", description="the update's kind: an AI question waits its turn", examples=['ai_queued'])
    version: int = Field(description="the room's version after this update", examples=[10])
    id: str = Field(description="the reply's id", examples=['9b2d1c3e-77aa-4f10-8c55-6e0f1a2b3c4d'])
    asker: str = Field(description='who asked', examples=['alice'])
    question: str = Field(description='the question, without the @ai prefix', examples=['what is a durable object?'])


class AiStarted(Contract):
    type: Literal["ai_started"] = Field("ai_started", description="the update's kind: the AI reply starts streaming", examples=['ai_started'])
    version: int = Field(description="the room's version after this update", examples=[11])
    id: str = Field(description="the reply's id", examples=['9b2d1c3e-77aa-4f10-8c55-6e0f1a2b3c4d'])
    asker: str = Field(description='who asked', examples=['alice'])
    model: str = Field(description='the model answering', examples=['gemini-2.5-flash'])
    label: str = Field(description='who answers, as shown to people', examples=['Gemini'])


class AiChunk(Contract):
    """Text of a streaming reply, starting at character `offset` (chunks never overlap)."""

    type: Literal["ai_chunk"] = Field("ai_chunk", description="the update's kind: more text of a streaming reply", examples=['ai_chunk'])
    version: int = Field(description="the room's version after this update", examples=[12])
    id: str = Field(description="the reply's id", examples=['9b2d1c3e-77aa-4f10-8c55-6e0f1a2b3c4d'])
    offset: int = Field(description='the character offset of `text` in the reply', examples=[0])
    text: str = Field(description='the text streamed', examples=['A durable object is'])


class AiFailed(Contract):
    """The reply ended without finishing; what was streamed follows as an incomplete message."""

    type: Literal["ai_failed"] = Field("ai_failed", description="the update's kind: the reply ended unfinished", examples=['ai_failed'])
    version: int = Field(description="the room's version after this update", examples=[13])
    id: str = Field(description="the reply's id", examples=['9b2d1c3e-77aa-4f10-8c55-6e0f1a2b3c4d'])
    reason: AiFailure = Field(description='why it ended', examples=['timeout'])
    message: ChatMessage | None = Field(None, description="The partial reply, marked incomplete.", examples=[{'id': '5f0e7c1a-9d51-4b8e-a3f2-0c1d2e3f4a5b', 'name': 'AI', 'message': 'A durable object is [incomplete]', 'timestamp': 1764547200000, 'kind': 'ai'}])


RoomUpdate = Annotated[
    MemberJoined | MessagePosted | MemberQuit | AiQueued | AiStarted | AiChunk | AiFailed,
    Field(discriminator="type"),
]
room_update = TypeAdapter(RoomUpdate)
