"""The projector under fire: kill -9 in the middle of batches while events flow; the read
store ends equal, row for row, to a fresh replay. Dead letters; the query API."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from contracts.room import JoinRoom, PostMessage, RoomClient
from contracts.subjects import ROOM, event_stream
from services.localsystem import LocalSystem
from services.projector.main import Projector
from services.readstore.projection import position
from services.readstore.store import open_read_store
from tests.e2e.read_models import TABLES, publish_unreadable_commits, rows
from tests.support import eventually, http

pytestmark = pytest.mark.e2e




def projected_to(db) -> int:
    conn = open_read_store(db, readonly=True)
    try:
        return position(conn, event_stream(ROOM))
    finally:
        conn.close()


async def last_sequence(nc) -> int:
    return (await nc.jetstream().stream_info(event_stream(ROOM))).state.last_seq


async def replay_into(nc, db) -> None:
    """A fresh replay of the whole stream into `db`, by a projector of its own."""
    replay = Projector(nc, db, name=f"replay-{uuid.uuid4().hex[:6]}")
    await replay.open()
    target = await last_sequence(nc)
    while replay.position < target:
        await replay.step()
    await nc.jetstream().delete_consumer(replay.stream, replay.durable)


async def chat(nc, rooms: int, messages: int) -> None:
    """Post `messages` into `rooms` rooms through the room service, many at once."""
    names = [f"proj-{uuid.uuid4().hex[:6]}-{i}" for i in range(rooms)]

    room_client = RoomClient(nc, timeout=10)

    async def ask(room, command):
        await room_client.send(room, command)

    await asyncio.gather(*(ask(r, JoinRoom(session_id="s", name=f"m-{r}")) for r in names))
    for start in range(0, messages, 200):
        await asyncio.gather(
            *(ask(names[i % rooms], PostMessage(session_id="s", text=f"t{i}"))
              for i in range(start, min(messages, start + 200)))
        )


@pytest.fixture
def system(tmp_path):
    local = LocalSystem(tmp_path / "system").start()
    yield local
    local.stop()


async def test_kill_9_mid_batch_many_times_ends_equal_to_a_fresh_replay(system, tmp_path):
    nc = await nats.connect(system.nats.url)
    flow = asyncio.create_task(chat(nc, rooms=20, messages=15000))

    # While events flow, the projector is killed outright again and again, each time as
    # soon as it has committed something more (so mostly in the middle of a batch).
    kills = 0
    while not flow.done():
        reached = projected_to(system.read_db) if system.read_db.exists() else 0
        await eventually(
            lambda reached=reached: flow.done()
            or (system.read_db.exists() and projected_to(system.read_db) > reached),
            timeout=20, what="the projector to move on",
        )
        system.projector.kill()
        system.start_projector()
        kills += 1
    await flow
    assert kills >= 5

    # It catches up, and its store is row for row what a fresh replay gives.
    target = await last_sequence(nc)
    await eventually(lambda: projected_to(system.read_db) == target, timeout=30, what="catch-up")
    fresh = tmp_path / "fresh.db"
    await replay_into(nc, fresh)
    for table in TABLES:
        assert rows(system.read_db, table) == rows(fresh, table), table
    assert len(rows(fresh, "messages")) == 15000
    await nc.close()


async def test_bad_events_are_dead_lettered_and_the_projector_moves_on(system):
    nc = await nats.connect(system.nats.url)
    js = nc.jetstream()
    await chat(nc, rooms=1, messages=1)  # creates the stream and a room
    garbage, unknown = await publish_unreadable_commits(js, "poisoned")
    await chat(nc, rooms=1, messages=1)  # and a good one after them

    target = await last_sequence(nc)
    await eventually(lambda: projected_to(system.read_db) == target, timeout=15, what="catch-up")
    letters = rows(system.read_db, "dead_letters")
    assert [(r[1], r[2]) for r in letters] == [(garbage.seq, -1), (unknown.seq, 0)]
    assert "not a stored commit" in letters[0][4]
    assert "unknown room event 'Teleported'" in letters[1][4]
    assert len(rows(system.read_db, "messages")) == 2
    await nc.close()


def get(system, path: str) -> tuple[int, dict]:
    response = http(system, "GET", path)
    return response.status_code, response.json()


async def test_the_query_api_pages_through_a_room(system):
    nc = await nats.connect(system.nats.url)
    room = "paged"

    room_client = RoomClient(nc, timeout=10)

    async def ask(command):
        await room_client.send(room, command)

    await ask(JoinRoom(session_id="s", name="alice"))
    for i in range(25):
        await ask(PostMessage(session_id="s", text=f"m{i}"))
    private = http(system, "POST", "/api/room").text
    target = await last_sequence(nc)
    await eventually(lambda: projected_to(system.read_db) == target, timeout=15, what="catch-up")

    # The room list has the public room and never the private one.
    status, listing = get(system, "/api/rooms")
    names = [r["name"] for r in listing["rooms"]]
    assert status == 200 and room in names and private not in names
    status, detail = get(system, f"/api/rooms/{room}")
    assert detail["message_count"] == 25 and [m["name"] for m in detail["members_seen"]] == ["alice"]

    # Newest first, 10 at a time, by cursor, to the end; then oldest first.
    seen, cursor = [], None
    while True:
        status, page = get(system, f"/api/rooms/{room}/messages?limit=10" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200
        seen += [m["text"] for m in page["messages"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"m{i}" for i in reversed(range(25))]
    status, page = get(system, f"/api/rooms/{room}/messages?order=oldest&limit=3")
    assert [m["text"] for m in page["messages"]] == ["m0", "m1", "m2"]

    # Bad input gets a clear 4xx naming what was wrong, in the one error shape.
    assert get(system, "/api/rooms/nowhere")[0] == 404
    assert get(system, "/api/rooms/nowhere/messages")[0] == 404
    status, body = get(system, f"/api/rooms/{room}/messages?cursor=garbage")
    assert status == 422 and body["error"]["message"].startswith("cursor: ")
    status, body = get(system, f"/api/rooms/{room}/messages?limit=0")
    assert status == 422 and body["error"]["fields"][0]["location"] == "query.limit"
    status, body = get(system, f"/api/rooms/{room}/messages?order=sideways")
    assert status == 422 and body["error"]["fields"][0]["location"] == "query.order"
    await nc.close()
