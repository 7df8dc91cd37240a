"""The Room aggregate on its own: decisions, timestamps, history, and rebuilding from events."""

import pytest

from contracts.room import HISTORY_LENGTH
from services.room.aireply import AiDeadlines
from services.room.domainmodel import (
    MessageTooLong,
    NameTooLong,
    NotAMember,
    Room,
    RoomError,
    room_id,
)

# What the room needs to know of time and AI deadlines on every post (any post may ask the AI).
AT = {"now": 1_000.0, "deadlines": AiDeadlines(start_timeout=30.0, max_duration=180.0,
                                               stall_timeout=45.0)}


def replay(events):
    room = None
    for e in events:
        room = e.mutate(room)
    return room


def test_a_room_story():
    # A public room opens with its name as identity: the same id on every replica.
    room = Room.open_public("lobby")
    assert room.id == room_id("lobby") and not room.private

    # Two people join; one posts.
    room.join("s1", "alice")
    room.join("s2", "bob")
    message = room.post("m1", "s1", "hello", now_ms=1000, **AT)
    assert message == {"id": "m1", "name": "alice", "message": "hello", "timestamp": 1000}

    # Bob leaves; his name is what the room broadcasts.
    assert room.leave("s2") == "bob"
    assert list(room.members.values()) == ["alice"]

    # Replaying the recorded events gives the same state.
    events = room.collect_events()
    assert [type(e).__name__ for e in events] == [
        "Created", "MemberJoined", "MemberJoined", "MessagePosted", "MemberLeft"
    ]
    rebuilt = replay(events)
    assert rebuilt.members == room.members
    assert rebuilt.messages == room.messages
    assert rebuilt.version == room.version == 5


def test_timestamps_strictly_increase_even_when_the_clock_does_not():
    room = Room.open_public("clock")
    room.join("s", "a")
    stamps = [room.post(f"m{i}", "s", "x", now_ms=now, **AT)["timestamp"] for i, now in
              enumerate([500, 500, 499, 10, 800])]
    assert stamps == [500, 501, 502, 503, 800]


def test_history_keeps_the_last_100_oldest_first():
    room = Room.open_public("long")
    room.join("s", "a")
    for i in range(HISTORY_LENGTH + 20):
        room.post(f"m{i}", "s", str(i), now_ms=i + 1, **AT)
    assert len(room.messages) == HISTORY_LENGTH
    assert room.messages[0]["message"] == "20"
    assert room.messages[-1]["message"] == str(HISTORY_LENGTH + 19)


def test_refusals_record_nothing():
    room = Room.open_public("strict")
    room.collect_events()
    with pytest.raises(NotAMember):
        room.post("m", "stranger", "hi", now_ms=1, **AT)
    with pytest.raises(NameTooLong):
        room.join("s", "x" * 33)
    room.join("s", "a")
    room.collect_events()
    with pytest.raises(MessageTooLong):
        room.post("m", "s", "x" * 257, now_ms=1, **AT)
    with pytest.raises(NotAMember):
        room.leave("nobody")
    assert room.collect_events() == []


def test_public_and_private_rooms_cannot_be_confused():
    with pytest.raises(RoomError):
        Room.open_public("a" * 64)
    with pytest.raises(RoomError):
        Room.create_private("not-hex", expire_unused_at=0)
    assert Room.create_private("b" * 64, expire_unused_at=0).private


def test_a_retried_command_is_applied_once():
    room = Room.open_public("retry")
    assert room.join("s", "a") is True
    assert room.join("s", "a") is False  # the same join again records nothing new
    first = room.post("m1", "s", "once", now_ms=1, **AT)
    assert first is not None
    assert room.post("m1", "s", "once", now_ms=2, **AT) is None
    assert [m["id"] for m in room.messages] == ["m1"]
    assert replay(room.collect_events()).recent_ids == {"m1": 1}
