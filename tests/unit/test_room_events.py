"""The room's stored events have one schema (services.room.events): the aggregate records
it under the topics already in users' streams, and the projection reads every one of it."""

from __future__ import annotations

from eventsourcing.utils import get_topic, resolve_topic

from services.readstore import projection
from services.room import events
from services.room.domainmodel import Room


def test_the_room_records_the_schema_under_its_stored_topics():
    for schema in events.ROOM_EVENTS:
        recorded = getattr(Room, schema.__name__)
        assert issubclass(recorded, schema)
        topic = f"services.room.domainmodel:Room.{schema.__name__}"
        assert get_topic(recorded) == topic
        assert resolve_topic(topic) is recorded


def test_the_projection_knows_every_event_of_the_schema():
    assert projection.PROJECTED.isdisjoint(projection.IGNORED)
    assert projection.PROJECTED | projection.IGNORED == set(events.ROOM_EVENTS)
