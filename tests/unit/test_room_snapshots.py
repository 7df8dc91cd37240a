"""Snapshot plus tail equals full replay, for any sequence of room commands (a property),
through the same codec the event store writes to JetStream with."""

from __future__ import annotations

from pathlib import Path

from eventsourcing.domain import Snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

from services.room.aireply import AiDeadlines, AiReply, AiStatus
from services.room.domainmodel import Room, RoomError, reply_id_of
from services.runtime.eventstore import CommitCodec

codec = CommitCodec()
DEADLINES = AiDeadlines(start_timeout=30.0, max_duration=180.0, stall_timeout=45.0)
sessions = st.sampled_from(["s1", "s2", "s3"])
commands = st.lists(
    st.one_of(
        st.tuples(st.just("join"), sessions, st.text(min_size=1, max_size=40)),
        st.tuples(st.just("post"), sessions, st.text(max_size=300)),
        st.tuples(st.just("leave"), sessions, st.none()),
    ),
    max_size=60,
)


def run(script) -> list:
    """Apply a command script to a fresh room; refusals record nothing. Returns the events."""
    room = Room.open_public("prop")
    for n, (verb, session, arg) in enumerate(script):
        try:
            if verb == "join":
                room.join(session, arg)
            elif verb == "post":
                room.post(f"m{n}", session, arg, now_ms=1_000 + n // 3, now=1.0,
                          deadlines=DEADLINES)
            else:
                room.leave(session)
        except RoomError:
            pass
    return room.collect_events()


def replay(events, room=None):
    for event in events:
        room = event.mutate(room)
    return room


def state(room: Room) -> dict:
    return {k: v for k, v in vars(room).items() if not k.startswith("_") or k == "_id"} | {
        "version": room.version
    }


@settings(max_examples=200, deadline=None)
@given(commands, st.data())
def test_snapshot_plus_tail_equals_full_replay(script, data):
    events = run(script)
    # Through the stored format, as the event store writes and reads it.
    events = codec.decode(codec.encode(events))
    full = replay(events)

    split = data.draw(st.integers(min_value=1, max_value=len(events)))
    snapshot = Snapshot.take(replay(events[:split]))
    (stored_snapshot,) = codec.decode(codec.encode([snapshot]))
    rebuilt = replay(events[split:], stored_snapshot.mutate(None))

    assert state(rebuilt) == state(full)


# A snapshot the room service stored before AI replies were values (Room class_version 2):
# alice's first question streaming ("Hel" so far), her second queued behind it.
V2_SNAPSHOT = (Path(__file__).parent / "data" / "room-snapshot-v2.json").read_bytes().strip()
STALLING = AiDeadlines(start_timeout=30.0, max_duration=100.0, stall_timeout=40.0)


def test_a_v2_snapshot_with_replies_as_dicts_still_loads():
    # The stored v2 snapshot is upcast: each reply becomes an AiReply at its stage.
    (snapshot,) = codec.decode(V2_SNAPSHOT)
    room = snapshot.mutate(None)
    streaming, queued = room.ai.values()
    assert streaming == AiReply(
        id=reply_id_of("m1"), user_id="u-alice", asker="alice", question="one",
        status=AiStatus.STREAMING, deadline=1101.0, alive_until=1041.0,
        model="gemini-2.5-flash", label="Gemini", text="Hel",
    )
    assert queued == AiReply(id=reply_id_of("m2"), user_id="u-alice", asker="alice",
                             question="two")
    assert room.version == 9 and room.wake_at() == 1041.0

    # The loaded room goes on where it stood: the stream continues, completes, and the
    # queued question is dispatched.
    assert room.append_ai(streaming.id, 3, "lo", now=1003.0, deadlines=STALLING)
    room.complete_ai(streaming.id, 5, 1, 1, now_ms=1010, now=1004.0, deadlines=STALLING)
    assert room.messages[-1]["message"] == "Hello"
    assert room.ai[queued.id].status is AiStatus.DISPATCHED
    assert room.ai[queued.id].deadline == 1004.0 + 30.0


def test_a_snapshot_mid_reply_loads_equal_through_the_codec():
    room = Room.open_public("lobby")
    room.join("s1", "alice")
    for n in (1, 2):
        room.post(f"m{n}", "s1", f"@ai q{n}", now_ms=n, now=1.0, deadlines=STALLING)
    head = reply_id_of("m1")
    room.start_ai(head, "gemini-2.5-flash", "Gemini", now=2.0, deadlines=STALLING)
    room.append_ai(head, 0, "so far", now=3.0, deadlines=STALLING)

    (stored,) = codec.decode(codec.encode([Snapshot.take(room)]))
    assert stored.state["class_version"] == Room.class_version == 4
    loaded = stored.mutate(None)
    assert state(loaded) == state(room)
    assert [type(r) for r in loaded.ai.values()] == [AiReply, AiReply]
