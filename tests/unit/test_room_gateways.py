"""A room knows which gateway holds each member, so a gateway that is gone takes its members
with it; events and snapshots stored before gateways had ids still load."""

from __future__ import annotations

import json

from eventsourcing.domain import Snapshot

from services.room.domainmodel import Room
from services.runtime.eventstore import CommitCodec

codec = CommitCodec()


def test_dropping_a_gateway_removes_only_its_members():
    room = Room.open_public("lobby")
    room.join("s1", "alice", "gw-a")
    room.join("s2", "bob", "gw-b")
    room.join("s3", "carol", "gw-a")
    room.join("s4", "dave")  # joined through a gateway without an id (an old one)
    assert room.drop_gateway("gw-a") == ["alice", "carol"]
    assert list(room.members.values()) == ["bob", "dave"]
    assert room.drop_gateway("gw-a") == []  # told again: nothing more to do
    left = [e for e in room.collect_events() if isinstance(e, Room.MemberLeft)]
    assert [e.member_name for e in left] == ["alice", "carol"]


def without(data: bytes, field: str, **changes) -> bytes:
    """A stored commit as older code wrote it: `field` absent from each event's state."""
    commit = json.loads(data)
    for stored in commit["events"]:
        state = json.loads(stored[2])
        if isinstance(state.get("state"), dict):  # a snapshot: the aggregate's own state
            inner = state["state"]
            inner.pop(field, None)
            inner.update(changes)
            stored[2] = json.dumps(state)
            continue
        state.pop(field, None)
        state.update(changes)
        stored[2] = json.dumps(state)
    return json.dumps(commit).encode()


def test_a_join_stored_without_a_gateway_still_decodes_and_replays():
    room = Room.open_public("lobby")
    room.join("s1", "alice", "gw-a")
    old = without(codec.encode(room.collect_events()), "gateway_id")
    replayed = None
    for event in codec.decode(old):
        replayed = event.mutate(replayed)
    assert replayed.members == {"s1": "alice"} and replayed.member_gateways == {}


def test_a_v3_snapshot_without_member_gateways_loads():
    room = Room.open_public("lobby")
    room.join("s1", "alice", "gw-a")
    room.collect_events()
    old = without(codec.encode([Snapshot.take(room)]), "member_gateways", class_version=3)
    (snapshot,) = codec.decode(old)
    loaded = snapshot.mutate(None)
    assert loaded.members == {"s1": "alice"} and loaded.member_gateways == {}


def test_a_member_rejoined_by_its_gateway_under_a_new_id_is_held_by_the_new_one():
    room = Room.open_public("lobby")
    room.join("s1", "alice", "gw-old")
    assert room.join("s1", "alice", "gw-old") is False  # a retried join: nothing recorded
    assert room.join("s1", "alice", "gw-new") is True  # its gateway lapsed and came back
    assert room.drop_gateway("gw-old") == []  # the sweep of the old id takes nobody
    assert room.drop_gateway("gw-new") == ["alice"]
