"""Snapshot plus tail equals full replay, for any sequence of room commands (a property),
through the same codec the event store writes to JetStream with."""

from __future__ import annotations

from eventsourcing.domain import Snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

from services.room.aireply import AiDeadlines
from services.room.domainmodel import Room, RoomError
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
