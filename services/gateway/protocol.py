"""The client side of the wire protocol of Cloudflare's workers-chat-demo, validated.

Client frames are `{"name": ...}` first, then `{"message": ...}`. Anything else gets a
clear `{"error": ...}` frame and changes nothing; only an over-long name also closes the
socket (code 1009), as the demo does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from contracts.room import (
    MAX_MESSAGE_LENGTH,
    MAX_NAME_LENGTH,
    AiReplyView,
    ChatMessage,
    RoomUpdate,
)

CLOSE_TOO_BIG = 1009
ANONYMOUS = "anonymous"


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


def _only(frame: dict, allowed: str, hint: str) -> None:
    unknown = sorted(set(frame) - {allowed})
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
    """The first frame: `{"name": ...}`; a missing or empty name is 'anonymous'."""
    frame = _decode(text, data, max_bytes)
    _only(frame, "name", 'the first frame is {"name": "..."}.')
    name = frame.get("name")
    if name is None or name == "":
        return NameFrame(ANONYMOUS)
    if not isinstance(name, str):
        raise FrameError("name must be a string.")
    _text_only(name, "name")
    if len(name) > MAX_NAME_LENGTH:
        raise FrameError("Name too long.", close_code=CLOSE_TOO_BIG)
    return NameFrame(name)


def parse_message_frame(text: str | None, data: bytes | None, max_bytes: int) -> MessageFrame:
    """A later frame: `{"message": ...}`."""
    frame = _decode(text, data, max_bytes)
    _only(frame, "message", 'send {"message": "..."}.')
    if "message" not in frame:
        raise FrameError('Expected {"message": "..."}.')
    message = frame["message"]
    if not isinstance(message, str):
        raise FrameError("message must be a string.")
    _text_only(message, "message")
    if len(message) > MAX_MESSAGE_LENGTH:
        raise FrameError("Message too long.")
    if not message:
        raise FrameError("Message is empty.")
    return MessageFrame(message)


# --- server frames ----------------------------------------------------------------------------


def encode(frame: dict) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def message_frame(message: ChatMessage) -> str:
    """A chat message as the demo sends it, plus its id and, for the AI's and the room's own
    messages, its kind (extensions old clients ignore)."""
    frame = {
        "name": message.name,
        "message": message.message,
        "timestamp": message.timestamp,
        "id": message.id,
    }
    if message.kind != "user":
        frame["kind"] = message.kind
    return encode(frame)


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
