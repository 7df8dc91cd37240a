"""The projector never acknowledges past a delivery it did not get. With AckPolicy.ALL an
ack covers every earlier delivery, so a pull answer lost on the way (cut by a node's
restart in a cluster: the rolling-restart drill found two commits missing from the read
store) would be skipped for good. Here another subscriber takes one delivery of the
projector's consumer, which is what the projector sees of a lost one."""

from __future__ import annotations

import sqlite3
import uuid

import pytest

from contracts.room import JoinRoom, PostMessage, RoomClient
from contracts.subjects import ROOM, event_stream
from services.projector.main import Projector
from tests.conftest import hosted
from tests.support import ask, eventually

pytestmark = pytest.mark.nats


def stored(db, room: str) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute(
            "SELECT text FROM messages WHERE room = ? AND kind = 'user' ORDER BY text", (room,))]
    finally:
        conn.close()


async def project_all(projector: Projector, last: int) -> None:
    async def done() -> bool:
        await projector.step(timeout=0.2)
        return projector.position >= last
    await eventually(done, 15, lambda: f"projected to {projector.position} of {last}")


async def test_a_delivery_lost_on_the_way_is_read_again_not_skipped(nats_server, nc, tmp_path):
    room = f"gap-{uuid.uuid4().hex[:8]}"
    js = nc.jetstream()
    async with hosted(nats_server):
        await ask(nc, RoomClient, room, JoinRoom(session_id="a", name="alice"))
        projector = Projector(nc, tmp_path / "read.db", name=f"gaps-{uuid.uuid4().hex[:6]}")
        await projector.open()
        await project_all(projector, (await js.stream_info(event_stream(ROOM))).state.last_seq)
        for n in range(5):
            await ask(nc, RoomClient, room, PostMessage(session_id="a", text=f"m{n}"))
    last = (await js.stream_info(event_stream(ROOM))).state.last_seq
    # The next delivery (m0's commit) goes elsewhere and is never acknowledged.
    thief = await js.pull_subscribe_bind(projector.durable, stream=projector.stream)
    (taken,) = await thief.fetch(1, timeout=5)
    await project_all(projector, last)
    assert stored(tmp_path / "read.db", room) == [f"m{n}" for n in range(5)]
    await js.delete_consumer(projector.stream, projector.durable)
