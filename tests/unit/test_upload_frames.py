"""Attachments on the socket's message frame: parsed strictly, echoed as an extension key."""

from __future__ import annotations

import json

import pytest

from contracts.room import ChatMessage
from services.gateway.protocol import FrameError, message_frame, parse_message_frame

UID = "a" * 64


def test_a_message_frame_may_carry_upload_ids() -> None:
    frame = parse_message_frame(json.dumps({"message": "look", "attachments": [UID]}), None, 4096)
    assert frame.text == "look" and frame.attachments == (UID,)
    assert parse_message_frame('{"message": "plain"}', None, 4096).attachments == ()
    only = parse_message_frame(json.dumps({"message": "", "attachments": [UID]}), None, 4096)
    assert only.attachments == (UID,)


@pytest.mark.parametrize(
    ("attachments", "why"),
    [("x", "list"), ([1], "list"), (["A" * 64], "Not an upload id"), ([UID, UID], "twice"),
     ([f"{i:064x}" for i in range(9)], "At most 8")],
)
def test_bad_attachments_are_refused(attachments: object, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        parse_message_frame(json.dumps({"message": "x", "attachments": attachments}), None, 4096)


def test_the_broadcast_carries_attachments_only_when_there_are_some() -> None:
    plain = json.loads(message_frame(ChatMessage(id="1", name="a", message="m", timestamp=1)))
    assert "attachments" not in plain
    frame = json.loads(message_frame(ChatMessage(id="1", name="a", message="m", timestamp=1, attachments=[UID])))
    assert frame["attachments"] == [UID]
