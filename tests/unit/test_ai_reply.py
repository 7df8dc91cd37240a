"""An AI reply on its own: each stage allows only its transitions, and one deadlines policy
says when each stage must be over."""

from __future__ import annotations

import pytest

from contracts.room import INCOMPLETE_MARK
from services.room.aireply import AiDeadlines, AiReply, AiStatus
from services.room.errors import AiReplyConflict, NoSuchAiReply

POLICY = AiDeadlines(start_timeout=30.0, max_duration=100.0, stall_timeout=40.0)


def asked() -> AiReply:
    return AiReply(id="r1", user_id="u-alice", asker="alice", question="what is NATS?")


def test_a_reply_goes_queued_dispatched_streaming_and_each_step_is_a_new_value():
    # Asked: queued, no deadline (it waits its turn).
    queued = asked()
    assert queued.status is AiStatus.QUEUED and queued.due_at() is None
    # Dispatched at 1000: it must start by the policy's start deadline.
    dispatched = queued.dispatch(POLICY.start_by(1000.0))
    assert dispatched.status is AiStatus.DISPATCHED and dispatched.due_at() == 1030.0
    assert queued.status is AiStatus.QUEUED  # values: the old one is unchanged
    # Started at 1010: done by 1110, a sign of life by 1050.
    deadline = POLICY.finish_by(1010.0)
    streaming = dispatched.start("gemini-2.5-flash", "Gemini", deadline,
                                 POLICY.alive_until(1010.0, deadline))
    assert (streaming.deadline, streaming.alive_until) == (1110.0, 1050.0)
    assert streaming.due_at() == 1050.0
    # Text continues where it stands; a retry of stored text is the same value.
    longer = streaming.append(0, "A messaging").append(11, " system.")
    assert longer.text == "A messaging system."
    assert longer.append(0, "A messaging") is longer
    assert longer.alive(1080.0).due_at() == 1080.0
    # Finished: the whole text, or what was streamed marked incomplete.
    assert longer.complete(19) == "A messaging system."
    assert longer.fail() == "A messaging system." + INCOMPLETE_MARK
    assert dispatched.fail() == ""  # nothing streamed: no message


def test_illegal_transitions_are_refused():
    queued = asked()
    dispatched = queued.dispatch(1030.0)
    streaming = dispatched.start("m", "Gemini", 1110.0, None)

    # Only a queued reply is dispatched, only a dispatched one starts.
    for reply in (dispatched, streaming):
        with pytest.raises(NoSuchAiReply):
            reply.dispatch(2000.0)
    for reply in (queued, streaming):
        with pytest.raises(NoSuchAiReply):
            reply.start("m", "Gemini", 2000.0, None)
    # Text and signs of life only while streaming.
    for reply in (queued, dispatched):
        with pytest.raises(NoSuchAiReply, match="has not started"):
            reply.append(0, "x")
        with pytest.raises(NoSuchAiReply):
            reply.alive(2000.0)
    # A queued reply cannot finish (it was never sent).
    with pytest.raises(NoSuchAiReply):
        queued.complete(0)
    with pytest.raises(NoSuchAiReply):
        queued.fail()
    # Text must continue the reply, and a completion must say its stored length.
    started = streaming.append(0, "Hel")
    with pytest.raises(AiReplyConflict):
        started.append(9, "gap")
    with pytest.raises(AiReplyConflict):
        started.append(0, "Hey")  # not what is stored at 0
    with pytest.raises(AiReplyConflict):
        started.complete(4)


def test_the_deadlines_policy():
    # The stall window never reaches past the hard deadline, and without a stall timeout
    # there is none.
    assert POLICY.alive_until(1000.0, deadline=1020.0) == 1020.0
    assert AiDeadlines(30.0, 100.0, None).alive_until(1000.0, 1100.0) is None

    # A sign of life renews the window only once half of it has passed, never past the deadline.
    reply = asked().dispatch(1030.0).start("m", "Gemini", 1100.0, 1040.0)
    assert POLICY.renewal(reply, now=1010.0) is None  # 30 s left of 40: not yet
    assert POLICY.renewal(reply, now=1020.0) == 1060.0
    assert POLICY.renewal(reply, now=1070.0) == 1100.0
    assert AiDeadlines(30.0, 100.0, None).renewal(reply, now=1030.0) is None

    # Why a reply past its deadline failed.
    assert asked().dispatch(1030.0).overdue(1029.0) is None
    assert asked().dispatch(1030.0).overdue(1030.0) == "the AI service did not start answering."
    assert reply.overdue(1040.0) == "the AI service stopped answering."
    assert reply.alive(1100.0).overdue(1100.0) == "it did not finish in time."

    # A policy with a timeout of zero or less is refused.
    for bad in ((0.0, 100.0, 40.0), (30.0, -1.0, 40.0), (30.0, 100.0, 0.0)):
        with pytest.raises(ValueError):
            AiDeadlines(*bad)


def test_a_reply_stored_with_its_status_as_text_is_the_same_value():
    # As a snapshot or a v2 upcast gives it: the status as its string.
    assert AiReply(id="r1", user_id="u-alice", asker="alice", question="what is NATS?",
                   status="dispatched", deadline=1030.0) == asked().dispatch(1030.0)
