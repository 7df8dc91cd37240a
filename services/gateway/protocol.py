"""The client side of the wire protocol of Cloudflare's workers-chat-demo, validated.

Client frames are `{"name": ...}` first, then `{"message": ...}`. Anything else gets a
clear `{"error": ...}` frame and changes nothing; only an over-long name also closes the
socket (code 1009), as the demo does. Names are normalized (NFKC, trimmed) before any check
(contracts.room.normalize_name): the name a room stores is the one every check saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from contracts.room import (
    ANONYMOUS,
    MAX_ATTACHMENTS,
    MAX_MESSAGE_LENGTH,
    MAX_NAME_LENGTH,
    AiReplyView,
    ChatMessage,
    RoomUpdate,
    is_blank,
    name_problem,
    normalize_name,
    reply_id_of,
)
from contracts.upload import UPLOAD_ID
from services.gateway import markdown

CLOSE_TOO_BIG = 1009


class FrameError(Exception):
    """A client frame that is refused; str(exc) is the text of the error frame."""

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


@dataclass(frozen=True)
class NameFrame:
    name: str


@dataclass(frozen=True)
class MessageFrame:
    text: str
    attachments: tuple[str, ...] = ()  # upload ids (an extension key old clients never send)


def _decode(text: str | None, data: bytes | None, max_bytes: int) -> dict:
    if text is None:
        raise FrameError("Binary frames are not supported; send JSON text frames.")
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise FrameError(f"Frame too large: at most {max_bytes} bytes.")
    try:
        value = json.loads(text)
    except RecursionError:
        raise FrameError("Frame is nested too deeply.") from None
    except ValueError:
        raise FrameError("Frame is not valid JSON.") from None
    if not isinstance(value, dict):
        raise FrameError("Frame must be a JSON object.")
    return value


def _only(frame: dict, allowed: str | set[str], hint: str) -> None:
    unknown = sorted(set(frame) - ({allowed} if isinstance(allowed, str) else allowed))
    if unknown:
        raise FrameError(f"Unknown key(s) {', '.join(map(json.dumps, unknown))[:100]}; {hint}")


def _text_only(value: str, field: str) -> None:
    # JSON may escape lone surrogates ("\ud800"), which are not Unicode text: refuse them
    # here, at the edge, rather than let them fail deeper in.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FrameError(f"{field} must be valid Unicode text.") from None


def parse_name_frame(text: str | None, data: bytes | None, max_bytes: int) -> NameFrame:
    """The first frame: `{"name": ...}`, normalized; a missing or empty (or blank) name is
    'anonymous'. Control characters and the reserved names (and look-alikes) are refused."""
    frame = _decode(text, data, max_bytes)
    _only(frame, "name", 'the first frame is {"name": "..."}.')
    raw = frame.get("name")
    if raw is None or raw == "":
        return NameFrame(ANONYMOUS)
    if not isinstance(raw, str):
        raise FrameError("name must be a string.")
    _text_only(raw, "name")
    name = normalize_name(raw)
    if len(raw) > MAX_NAME_LENGTH or len(name) > MAX_NAME_LENGTH:
        raise FrameError("Name too long.", close_code=CLOSE_TOO_BIG)
    if problem := name_problem(name):
        raise FrameError(problem)
    return NameFrame(name)


def parse_message_frame(text: str | None, data: bytes | None, max_bytes: int) -> MessageFrame:
    """A later frame: `{"message": ...}`."""
    frame = _decode(text, data, max_bytes)
    _only(frame, {"message", "attachments"}, 'send {"message": "..."}.')
    if "message" not in frame:
        raise FrameError('Expected {"message": "..."}.')
    message = frame["message"]
    if not isinstance(message, str):
        raise FrameError("message must be a string.")
    _text_only(message, "message")
    if len(message) > MAX_MESSAGE_LENGTH:
        raise FrameError("Message too long.")
    attachments = _attachments(frame.get("attachments", []))
    if not message and not attachments:
        raise FrameError("Message is empty.")
    if is_blank(message) and not attachments:
        raise FrameError("Message is empty: it holds only spaces.")
    return MessageFrame(message, attachments)


def _attachments(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FrameError("attachments must be a list of upload ids.")
    if len(value) > MAX_ATTACHMENTS:
        raise FrameError(f"At most {MAX_ATTACHMENTS} attachments per message.")
    if len(set(value)) != len(value):
        raise FrameError("An attachment is listed twice.")
    for upload_id in value:
        if not UPLOAD_ID.match(upload_id):
            raise FrameError(f"Not an upload id: {upload_id[:70]!r}.")
    return tuple(value)


# --- server frames ----------------------------------------------------------------------------


def encode(frame: dict) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def message_frame(message: ChatMessage, asker: str | None = None) -> str:
    """A chat message as the demo sends it, plus its id and, for the AI's and the room's own
    messages, its kind (extensions old clients ignore). An AI message also carries its text
    rendered from markdown as sanitized HTML ("html"), and in history who asked ("asker")."""
    frame: dict = {
        "name": message.name,
        "message": message.message,
        "timestamp": message.timestamp,
        "id": message.id,
    }
    if message.kind != "user":
        frame["kind"] = message.kind
    if message.kind == "ai":
        frame["html"] = markdown.render(message.message)
        if asker is not None:
            frame["asker"] = asker
    if message.attachments:
        frame["attachments"] = message.attachments
    return encode(frame)


def history_frames(messages: list[ChatMessage]) -> list[str]:
    """The frames of a room's history: each AI message names its asker when the question is
    in the history too (the AI answers the message whose reply id is its own id)."""
    askers = {reply_id_of(m.id): m.name for m in messages if m.kind == "user"}
    return [message_frame(m, askers.get(m.id) if m.kind == "ai" else None) for m in messages]


def ai_frame(event: str, **fields) -> str:
    """An AI reply's progress: `{"ai": {"event": ..., "id": ...}}`. It has no "timestamp", so
    the demo's clients, which show only frames with a newer timestamp, ignore it."""
    return encode({"ai": {"event": event, **fields}})


def update_frames(update: RoomUpdate) -> list[str]:
    """The socket frames of one broadcast (most are one frame)."""
    match update.type:
        case "joined":
            return [encode({"joined": update.name})]
        case "quit":
            return [encode({"quit": update.name})]
        case "message":
            return [message_frame(update.message)]
        case "ai_queued":
            return [ai_frame("queued", id=update.id, asker=update.asker, question=update.question)]
        case "ai_started":
            return [
                ai_frame(
                    "started", id=update.id, asker=update.asker, model=update.model,
                    label=update.label,
                )
            ]
        case "ai_chunk":
            return [ai_frame("chunk", id=update.id, offset=update.offset, text=update.text)]
        case "ai_failed":
            frames = [ai_frame("failed", id=update.id, reason=update.reason)]
            if update.message is not None:
                frames.append(message_frame(update.message))
            return frames
    raise AssertionError(update)


def ai_progress_frames(reply: AiReplyView) -> list[str]:
    """What a socket joining mid-reply is shown of an unfinished AI reply: the reply as it
    stands (everything streamed so far, as one chunk); live chunks continue from there."""
    if reply.status != "streaming":
        return [ai_frame("queued", id=reply.id, asker=reply.asker, question=reply.question)]
    frames = [
        ai_frame("started", id=reply.id, asker=reply.asker, model=reply.model, label=reply.label)
    ]
    if reply.text:
        frames.append(ai_frame("chunk", id=reply.id, offset=0, text=reply.text))
    return frames


def error_frame(message: str, retry_after: float | None = None) -> str:
    """`{"error": ...}`; a refusal that passes with time also says after how many seconds a
    frame may pass again (`retry_after`, an extension old clients ignore)."""
    if retry_after is None:
        return encode({"error": message})
    return encode({"error": message, "retry_after": retry_after})


READY = encode({"ready": True})
