"""Live delivery without gaps: a broadcast the gateway's connection never got (core NATS
drops messages to a slow or reconnecting connection) is read from the room's event stream
before any later one is delivered, and a lost last broadcast is found by a catch-up (after
a reconnect). Real nats-server, the room object hosted in this process, the gateway's
RoomFanouts on its own connection."""

from __future__ import annotations

import json

import nats
import pytest

from contracts.room import JoinRoom, PostMessage, RoomClient
from services.gateway.rooms import RoomFanouts
from services.gateway.sockets import OutFrame
from tests.conftest import hosted
from tests.support import ask, eventually

pytestmark = pytest.mark.nats


class Lossy:
    """Stands between the subscription and the fan-out, dropping the broadcasts it is told to."""

    def __init__(self, fanout_callback, drop: set[int]) -> None:
        self.callback = fanout_callback
        self.drop = drop  # indexes of broadcasts (0-based, in arrival order) to lose
        self.seen = 0

    async def __call__(self, msg) -> None:
        index, self.seen = self.seen, self.seen + 1
        if index not in self.drop:
            await self.callback(msg)


async def lossy_fanout(nc, room: str, drop: set[int]):
    """A RoomFanouts whose room subscription loses the broadcasts numbered in `drop`, and
    what its one listener was handed, as (version, text of the message frame or None)."""
    fanouts = RoomFanouts(nc)
    got: list[tuple[int, dict]] = []

    def deliver(version: int, frame: OutFrame) -> None:
        got.append((version, json.loads(frame.text)))

    fanout = await fanouts.attach(room, 1, deliver)
    assert fanout.subscription is not None
    fanout.subscription._cb = Lossy(fanout.on_message, drop)  # the drop happens on the wire
    return fanouts, fanout, got


def texts(got: list[tuple[int, dict]]) -> list[str]:
    return [frame["message"] for _, frame in got if "message" in frame]


async def test_a_lost_broadcast_is_read_from_the_stream_before_the_next(nats_server, nc, room_name):
    async with hosted(nats_server):
        await ask(nc, RoomClient, room_name, JoinRoom(session_id="a", name="alice"))
        gateway_nc = await nats.connect(nats_server.url)
        fanouts, fanout, got = await lossy_fanout(gateway_nc, room_name, drop={1, 2})
        for n in range(5):
            await ask(nc, RoomClient, room_name, PostMessage(session_id="a", text=f"m{n}"))
        await eventually(lambda: len(texts(got)) >= 5, 10, lambda: f"got {texts(got)}")
        # Every message once, in order, although m1 and m2 never reached this connection.
        assert texts(got) == [f"m{n}" for n in range(5)]
        versions = [v for v, _ in got]
        assert versions == sorted(set(versions))
        assert fanout.repairs >= 1 and fanout.repaired >= 2
        await fanouts.detach(room_name, 1)
        await gateway_nc.close()


async def test_a_lost_last_broadcast_is_found_by_a_catch_up(nats_server, nc, room_name):
    async with hosted(nats_server):
        await ask(nc, RoomClient, room_name, JoinRoom(session_id="a", name="alice"))
        gateway_nc = await nats.connect(nats_server.url)
        fanouts, fanout, got = await lossy_fanout(gateway_nc, room_name, drop={1})
        for n in range(2):
            await ask(nc, RoomClient, room_name, PostMessage(session_id="a", text=f"m{n}"))
        await eventually(lambda: texts(got) == ["m0"], 10, lambda: f"got {texts(got)}")
        # Nothing follows m1 to reveal the gap; the gateway reconnects (or was a slow
        # consumer) and checks every room it fans out.
        fanouts.catch_up()
        await eventually(lambda: texts(got) == ["m0", "m1"], 10, lambda: f"got {texts(got)}")
        await fanouts.detach(room_name, 1)
        await gateway_nc.close()


async def test_a_poster_waiting_for_a_lost_broadcast_gets_it_from_the_stream(nats_server, nc, room_name):
    async with hosted(nats_server):
        await ask(nc, RoomClient, room_name, JoinRoom(session_id="a", name="alice"))
        gateway_nc = await nats.connect(nats_server.url)
        fanouts, fanout, got = await lossy_fanout(gateway_nc, room_name, drop={0})
        accepted = await ask(nc, RoomClient, room_name, PostMessage(session_id="a", text="only"))
        # The socket that posted waits for its echo (converse: `delivered`), which is late.
        assert await fanout.delivered(accepted.version, timeout=5)
        assert texts(got) == ["only"]
        await fanouts.detach(room_name, 1)
        await gateway_nc.close()


async def test_a_broadcast_delivered_through_the_stream_wakes_whoever_waits_for_it(nats_server, nc, room_name):
    # The first broadcast after a room loads names no previous one, so it is delivered by
    # a read of the stream; a socket waiting for its version (its join, its post) must be
    # told then, not after the late-echo check (0.5 s: the rate-limit tests saw joins slow).
    async with hosted(nats_server):
        gateway_nc = await nats.connect(nats_server.url)
        fanouts, fanout, got = await lossy_fanout(gateway_nc, room_name, drop=set())
        joined = await ask(nc, RoomClient, room_name, JoinRoom(session_id="a", name="alice"))
        assert await fanout.delivered(joined.version, timeout=0.4)
        assert fanout.repairs == 1
        await fanouts.detach(room_name, 1)
        await gateway_nc.close()
