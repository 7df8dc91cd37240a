"""The bus described: an AsyncAPI 3.0 document of every subject durachat uses and every
message on it, generated from the pydantic contracts in contracts/.

The document is built here from the contracts' JSON schemas (one component schema per
contract model), not by a framework reading handlers: the runtime stays on nats-py. The
generated document is kept in `docs/asyncapi.json`; a test fails when it differs from what
the contracts generate now. Regenerate it with

    python -m services.gateway.asyncapi --write

The gateway serves it at `/asyncapi.json` (next to `/openapi.json`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, TypeAdapter

from contracts.context import ContextCommand, ContextReply
from contracts.ratelimit import LimiterReply, QuotaCommand, QuotaReply, TakeToken
from contracts.room import RoomCommand, RoomReply, RoomUpdate
from contracts.upload import UPLOAD, UploadCommand, UploadProgress, UploadReply

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"
REF = "#/components/schemas/{model}"

TRACE_HEADERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "traceparent": {
            "type": "string",
            "description": "W3C trace context of the sender's span (present when tracing is on)",
            "examples": ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
        },
        "tracestate": {"type": "string", "description": "W3C trace state, when there is one"},
    },
}

COMMIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One stored commit: the events one group commit appended for the object, "
    "in order (eventsourcing's stored events: topic, version, state as JSON text).",
    "required": ["id", "events"],
    "properties": {
        "id": {"type": "string", "format": "uuid", "description": "the object's originator id"},
        "events": {
            "type": "array",
            "items": {
                "type": "array",
                "prefixItems": [
                    {"type": "string", "description": "event topic",
                     "examples": ["services.room.events:MessagePosted"]},
                    {"type": "integer", "description": "the object's version after the event"},
                    {"type": "string", "description": "the event's state, JSON text"},
                ],
            },
        },
    },
}


def members(union: Any) -> list[type[BaseModel]]:
    """The models of a (possibly Annotated) union, or the one model."""
    if isinstance(union, type) and issubclass(union, BaseModel):
        return [union]
    args = get_args(union)
    if args and not (isinstance(args[0], type) and issubclass(args[0], BaseModel)):
        return members(args[0])  # Annotated[Union, Field(...)]
    found: list[type[BaseModel]] = []
    for arg in args:
        found.extend(members(arg))
    return found


class Builder:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}

    def message(self, model: type[BaseModel], *, headers: bool = True) -> dict[str, str]:
        """A component message for `model` (its schema among the components); its $ref."""
        schema = TypeAdapter(model).json_schema(ref_template=REF)
        for name, sub in schema.pop("$defs", {}).items():
            self.schemas.setdefault(name, sub)
        name = model.__name__
        self.schemas[name] = schema
        message: dict[str, Any] = {
            "name": name,
            "title": name,
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model=name)},
        }
        doc = (model.__doc__ or "").strip()
        if doc and model.__doc__ != BaseModel.__doc__:
            message["summary"] = " ".join(doc.split("\n\n")[0].split())
        if headers:
            message["headers"] = {"$ref": "#/components/schemas/TraceHeaders"}
        self.messages[name] = message
        return {"$ref": f"#/components/messages/{name}"}

    def refs(self, union: Any) -> dict[str, dict[str, str]]:
        return {m.__name__: self.message(m) for m in members(union)}


def command_channel(kind: str, what: str) -> dict[str, Any]:
    return {
        "address": f"cmd.{kind}.{{key}}",
        "title": f"commands to {kind} objects",
        "description": f"Requests to one {what}. The server maps `cmd.{kind}.<key>` to "
        f"`cmd.{kind}.<partition>.<key>`; only the partition's owner subscribes. Every "
        "command is answered on the request's reply subject; a retry carries the same "
        "`command_id` and is applied once.",
        "parameters": {"key": {"description": "the object's key as a subject token "
                               "(contracts/keys.py `subject_token`)"}},
    }


def build() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the bus, from the contracts."""
    b = Builder()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    def request_reply(kind: str, what: str, commands: Any, replies: Any) -> None:
        channel = command_channel(kind, what)
        channel["messages"] = b.refs(commands)
        reply_channel = f"{kind}Replies"
        channels[f"{kind}Commands"] = channel
        channels[reply_channel] = {
            "address": None,
            "title": f"replies of {kind} objects",
            "description": "The request's reply inbox (`_INBOX.…`).",
            "messages": b.refs(replies),
        }
        operations[f"send{kind.title()}Command"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{kind}Commands"},
            "summary": f"Ask a {what}; its owner answers once the commit is stored.",
            "messages": [{"$ref": f"#/channels/{kind}Commands/messages/{name}"}
                         for name in channel["messages"]],
            "reply": {
                "channel": {"$ref": f"#/channels/{reply_channel}"},
                "messages": [{"$ref": f"#/channels/{reply_channel}/messages/{name}"}
                             for name in channels[reply_channel]["messages"]],
            },
        }

    b.schemas["TraceHeaders"] = TRACE_HEADERS
    request_reply("room", "chat room", RoomCommand, RoomReply)
    request_reply("context", "user's AI context", ContextCommand, ContextReply)
    request_reply("limiter", "per-IP rate limiter", TakeToken, LimiterReply)
    request_reply("quota", "user's AI quota", QuotaCommand, QuotaReply)
    request_reply(UPLOAD, "upload (a file's bytes in the object store, its Gemini copy)",
                  UploadCommand, UploadReply)

    channels["roomUpdates"] = {
        "address": "out.room.{key}",
        "title": "what a room's watchers are told",
        "description": "Published by the room's owner after each commit is stored (core NATS, "
        "not persisted); every gateway with a socket in the room fans it out. A new owner "
        "says the last commit again: watchers drop versions they already have.",
        "parameters": {"key": {"description": "the room's name as a subject token"}},
        "messages": b.refs(RoomUpdate),
    }
    operations["receiveRoomUpdates"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/roomUpdates"},
        "summary": "Gateways fan a room's updates out to its sockets.",
        "messages": [{"$ref": f"#/channels/roomUpdates/messages/{n}"}
                     for n in channels["roomUpdates"]["messages"]],
    }
    channels["uploadProgress"] = {
        "address": "out.upload.{key}",
        "title": "a room's uploads on their way",
        "description": "Published by the gateway storing an upload's bytes, at most every "
        "250 ms and once every byte is stored (core NATS, not persisted); every gateway with "
        "a socket in the room sends its sockets an `upload` frame.",
        "parameters": {"key": {"description": "the room's name as a subject token"}},
        "messages": {"UploadProgress": b.message(UploadProgress, headers=False)},
    }
    operations["receiveUploadProgress"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/uploadProgress"},
        "summary": "Gateways pass a room's upload progress to its sockets.",
        "messages": [{"$ref": "#/channels/uploadProgress/messages/UploadProgress"}],
    }
    b.schemas["Commit"] = COMMIT_SCHEMA
    b.messages["Commit"] = {
        "name": "Commit", "title": "Commit", "contentType": "application/json",
        "summary": "One group commit of an object (JetStream stream EVT_<KIND>).",
        "payload": {"$ref": "#/components/schemas/Commit"},
        "headers": {"$ref": "#/components/schemas/TraceHeaders"},
    }
    channels["roomEvents"] = {
        "address": "evt.room.{key}",
        "title": "a room's event stream",
        "description": "JetStream stream EVT_ROOM, one subject per room, one message per "
        "commit (`Nats-Msg-Id` the command id; appends expect the last subject sequence). "
        "The projector consumes it into the read store.",
        "parameters": {"key": {"description": "the room's name as a subject token"}},
        "messages": {"Commit": {"$ref": "#/components/messages/Commit"}},
    }
    operations["receiveRoomEvents"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/roomEvents"},
        "summary": "The projector applies each stored commit to the read store once.",
        "messages": [{"$ref": "#/channels/roomEvents/messages/Commit"}],
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "durachat bus",
            "version": "1",
            "description": "Subjects and messages of durachat on NATS JetStream, generated from "
            "contracts/. Tracing, when on, adds a W3C `traceparent` header to commands, "
            "updates and stored commits.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {"host": "127.0.0.1:4222", "protocol": "nats",
                     "description": "DURACHAT_NATS_URL"},
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": dict(sorted(b.schemas.items())),
            "messages": dict(sorted(b.messages.items())),
        },
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Print (or --write) the AsyncAPI document.")
    parser.add_argument("--write", action="store_true", help=f"write {DOCUMENT}")
    args = parser.parse_args()
    if args.write:
        DOCUMENT.write_text(render())
        print(f"wrote {DOCUMENT}")
    else:
        print(render(), end="")


if __name__ == "__main__":
    main()
