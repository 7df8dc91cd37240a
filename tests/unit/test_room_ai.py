"""The Room aggregate's AI replies: one answered at a time, in order; every chunk stored;
failures keep the partial text; deadlines close what never finished."""

from __future__ import annotations

import pytest

from contracts.room import HISTORY_CHARS, INCOMPLETE_MARK, MAX_AI_QUEUE, ai_question
from services.room.aireply import AiDeadlines
from services.room.domainmodel import (
    AiReplyConflict,
    NameReserved,
    NoSuchAiReply,
    Room,
    reply_id_of,
)

START = 30.0
NOW = 1_000.0
DEADLINES = AiDeadlines(start_timeout=START, max_duration=100.0, stall_timeout=None)


def room_with(*names: str) -> Room:
    room = Room.open_public("lobby")
    for name in names:
        room.join(f"s-{name}", name)
    return room


def ask(room: Room, name: str, text: str, message_id: str, ms: int = 1) -> str:
    room.post(message_id, f"s-{name}", text, now_ms=ms, now=NOW, deadlines=DEADLINES,
              user_id=f"u-{name}")
    return reply_id_of(message_id)


def test_only_messages_starting_with_the_prefix_ask_the_ai():
    assert ai_question("@ai what is NATS?") == "what is NATS?"
    assert ai_question("/AI  hello ") == "hello"
    assert ai_question("@ai") is None  # nothing asked
    assert ai_question("hey @ai what") is None
    assert ai_question("@aid me") is None


def test_questions_queue_and_are_answered_in_order():
    room = room_with("alice", "bob")
    first = ask(room, "alice", "@ai one", "m1")
    second = ask(room, "bob", "/ai two", "m2")
    assert [r.status for r in room.ai.values()] == ["dispatched", "queued"]
    assert room.ai[first].deadline == NOW + START
    assert room.wake_at() == NOW + START
    with pytest.raises(NoSuchAiReply):  # only the head of the queue may start
        room.start_ai(second, "m", "Gemini", now=NOW, deadlines=DEADLINES)

    assert room.start_ai(first, "gemini-2.5-flash", "Gemini", now=NOW, deadlines=DEADLINES)
    # a retry
    assert not room.start_ai(first, "gemini-2.5-flash", "Gemini", now=NOW, deadlines=DEADLINES)
    assert room.append_ai(first, 0, "Hel", now=NOW, deadlines=DEADLINES)
    assert room.append_ai(first, 3, "lo", now=NOW, deadlines=DEADLINES)
    # a retry of stored text changes nothing
    assert not room.append_ai(first, 0, "Hel", now=NOW, deadlines=DEADLINES)
    with pytest.raises(AiReplyConflict):
        room.append_ai(first, 9, "gap", now=NOW, deadlines=DEADLINES)
    with pytest.raises(AiReplyConflict):
        # not what is stored
        room.complete_ai(first, 4, 0, 0, now_ms=10, now=NOW, deadlines=DEADLINES)
    message = room.complete_ai(first, 5, 7, 2, now_ms=10, now=NOW + 1, deadlines=DEADLINES)
    assert message == {"id": first, "name": "AI", "message": "Hello", "timestamp": 10, "kind": "ai"}
    # a retried completion
    assert room.complete_ai(first, 5, 7, 2, now_ms=11, now=NOW, deadlines=DEADLINES) is None
    assert list(room.ai) == [second] and room.ai[second].status == "dispatched"
    assert room.ai[second].deadline == NOW + 1 + START
    assert room.ai[second].user_id == "u-bob"


def test_a_failure_keeps_the_partial_text_and_tells_the_room():
    room = room_with("alice")
    reply = ask(room, "alice", "@ai tell me", "m1")
    room.start_ai(reply, "m", "Gemini", now=NOW, deadlines=DEADLINES)
    room.append_ai(reply, 0, "Part", now=NOW, deadlines=DEADLINES)
    room.fail_ai(reply, "rate_limited", "the provider is busy.", 5, 1,
                 now_ms=20, now=NOW, deadlines=DEADLINES)
    *_, partial, notice = room.messages
    assert partial["message"] == "Part" + INCOMPLETE_MARK and partial["kind"] == "ai"
    assert notice["kind"] == "system" and notice["name"] == "system"
    assert "alice" in notice["message"] and "the provider is busy." in notice["message"]
    assert room.ai == {}
    # a retry: nothing new
    room.fail_ai(reply, "rate_limited", "again", 0, 0, now_ms=30, now=NOW, deadlines=DEADLINES)
    assert room.messages[-1] == notice


def test_the_deadline_alarm_fails_a_reply_that_never_started_or_finished():
    room = room_with("alice")
    first = ask(room, "alice", "@ai one", "m1")
    second = ask(room, "alice", "@ai two", "m2")
    # not due yet: nothing
    assert not room.alarm_due(NOW + START - 1, now=NOW, now_ms=5, deadlines=DEADLINES)
    assert room.alarm_due(NOW + START, now=NOW + START, now_ms=6, deadlines=DEADLINES)
    assert first not in room.ai and room.ai[second].status == "dispatched"
    assert "did not start" in room.messages[-1]["message"]
    room.start_ai(second, "m", "Gemini", now=NOW + START, deadlines=DEADLINES)
    room.append_ai(second, 0, "half", now=NOW, deadlines=DEADLINES)
    assert room.wake_at() == NOW + START + 100
    assert room.alarm_due(NOW + START + 100, now=NOW + START + 100, now_ms=9, deadlines=DEADLINES)
    assert room.messages[-2]["message"] == "half" + INCOMPLETE_MARK
    assert room.wake_at() is None
    # a duplicate does nothing
    assert not room.alarm_due(NOW + START + 100, now=NOW, now_ms=10, deadlines=DEADLINES)


def test_the_queue_is_bounded_and_a_question_over_it_is_told_so():
    room = room_with("alice")
    for i in range(MAX_AI_QUEUE):
        ask(room, "alice", f"@ai q{i}", f"m{i}")
    ask(room, "alice", "@ai one too many", "extra")
    assert len(room.ai) == MAX_AI_QUEUE
    assert room.messages[-1]["kind"] == "system" and "ask again" in room.messages[-1]["message"]


def test_the_ai_and_system_names_are_reserved():
    room = room_with()
    for name in ("AI", "ai", "System"):
        with pytest.raises(NameReserved):
            room.join("s", name)


def test_a_room_rebuilt_from_its_events_has_the_same_ai_state():
    room = room_with("alice")
    reply = ask(room, "alice", "@ai one", "m1")
    room.start_ai(reply, "m", "Gemini", now=NOW, deadlines=DEADLINES)
    room.append_ai(reply, 0, "so far", now=NOW, deadlines=DEADLINES)
    events = room.collect_events()
    copy = None
    for event in events:
        copy = event.mutate(copy)
    assert copy.ai == room.ai and copy.messages == room.messages


def test_long_ai_replies_bound_the_history_by_characters_too():
    # A room's state travels whole in one NATS message and one snapshot: 100 long replies
    # must not make it larger than the server takes.
    room = room_with("alice")
    for i in range(12):
        reply = ask(room, "alice", f"@ai q{i}", f"m{i}", ms=10 * i)
        room.start_ai(reply, "m", "Gemini", now=NOW, deadlines=DEADLINES)
        room.append_ai(reply, 0, "x" * 10_000, now=NOW, deadlines=DEADLINES)
        room.complete_ai(reply, 10_000, 0, 0, now_ms=10 * i + 1, now=NOW, deadlines=DEADLINES)
    assert sum(len(m["message"]) for m in room.messages) <= HISTORY_CHARS
    assert room.messages[-1]["message"] == "x" * 10_000  # the newest stays
    # Ordinary chat keeps its 100 messages.
    chat = room_with("bob")
    for i in range(150):
        chat.post(f"c{i}", "s-bob", "y" * 256, now_ms=i, now=NOW, deadlines=DEADLINES)
    assert len(chat.messages) == 100


def test_a_streaming_reply_must_show_signs_of_life_within_the_stall_timeout():
    stall, hard = 40.0, 100.0
    stalling = AiDeadlines(start_timeout=START, max_duration=hard, stall_timeout=stall)
    room = room_with("alice")
    reply = ask(room, "alice", "@ai one", "m1")
    room.start_ai(reply, "m", "Gemini", now=NOW, deadlines=stalling)
    assert room.wake_at() == NOW + stall
    room.collect_events()
    # Appends early in the window renew nothing (the alarm is not re-scheduled per chunk) ...
    room.append_ai(reply, 0, "a", now=NOW + 5, deadlines=stalling)
    assert [type(e).__name__ for e in room.collect_events()] == ["AiReplyChunk"]
    # ... past half of it, one append renews it, never beyond the hard deadline.
    room.append_ai(reply, 1, "b", now=NOW + 25, deadlines=stalling)
    assert [type(e).__name__ for e in room.collect_events()] == ["AiReplyChunk", "AiReplyAlive"]
    assert room.wake_at() == NOW + 25 + stall
    room.append_ai(reply, 2, "c", now=NOW + 90, deadlines=stalling)
    assert room.wake_at() == NOW + hard
    # A streamer that goes quiet: the alarm at the stall deadline fails the reply, text kept.
    quiet = room_with("bob")
    other = ask(quiet, "bob", "@ai two", "m2")
    quiet.start_ai(other, "m", "Gemini", now=NOW, deadlines=stalling)
    quiet.append_ai(other, 0, "half", now=NOW + 1, deadlines=stalling)
    assert quiet.alarm_due(NOW + stall, now=NOW + stall, now_ms=50, deadlines=DEADLINES)
    *_, partial, notice = quiet.messages
    assert partial["message"] == "half" + INCOMPLETE_MARK
    assert notice["message"].endswith("the AI service stopped answering.")
