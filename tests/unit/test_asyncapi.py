"""The AsyncAPI document of the bus: valid AsyncAPI 3.0, every reference resolving, current
with contracts/ (docs/asyncapi.json is what they generate now), and every field a client
sees described, with an example."""

from __future__ import annotations

import json
from typing import Any

from faststream.specification.asyncapi.v3_0_0.schema import ApplicationSchema

from contracts import common, context, room
from services.gateway import asyncapi


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def resolve(document: dict, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve (at {part})"
        node = node[part]
    return node


def test_the_document_is_valid_asyncapi_3():
    document = asyncapi.build()
    # faststream's AsyncAPI 3.0 models (it insists on a server `pathname`, which NATS lacks).
    ApplicationSchema.model_validate({k: v for k, v in document.items() if k != "servers"})
    assert document["asyncapi"] == "3.0.0"
    for ref in refs(document):
        resolve(document, ref)
    for name, operation in document["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        channel = resolve(document, operation["channel"]["$ref"])
        for message in operation["messages"]:
            assert message["$ref"].startswith(operation["channel"]["$ref"] + "/messages/"), name
    subjects = {c["address"] for c in document["channels"].values()}
    assert {"cmd.room.{key}", "cmd.context.{key}", "cmd.limiter.{key}", "cmd.quota.{key}",
            "out.room.{key}", "evt.room.{key}"} <= subjects
    # Every command and update of the contracts is a message of its channel.
    room_commands = set(document["channels"]["roomCommands"]["messages"])
    assert {m.__name__ for m in asyncapi.members(room.RoomCommand)} == room_commands
    updates = set(document["channels"]["roomUpdates"]["messages"])
    assert {m.__name__ for m in asyncapi.members(room.RoomUpdate)} == updates
    assert channel is not None


def test_the_committed_document_is_current():
    current = asyncapi.render()
    stored = asyncapi.DOCUMENT.read_text()
    assert json.loads(stored) == json.loads(current), (
        "docs/asyncapi.json is stale: run `python -m services.gateway.asyncapi --write`"
    )


CLIENT_VISIBLE = [
    *asyncapi.members(room.RoomUpdate), room.RoomState, room.ChatMessage, room.AiReplyView,
    context.ContextView, context.ContextSettings, context.Exchange, common.ErrorReply,
]


def test_every_field_a_client_sees_is_described_with_an_example():
    missing = [
        f"{model.__name__}.{name}: {what}"
        for model in CLIENT_VISIBLE
        for name, field in model.model_fields.items()
        for what, value in (("description", field.description), ("example", field.examples))
        if not value
    ]
    assert missing == []
