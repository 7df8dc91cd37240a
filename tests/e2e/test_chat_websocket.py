"""The workers-chat-demo protocol end to end: real gateway, room service and nats-server
processes, real WebSocket clients."""

from __future__ import annotations

import uuid

import pytest
import websockets

from contracts.keys import is_private_room_id
from tests.e2e.chat_clients import ChatClient, joined
from tests.support import http

pytestmark = pytest.mark.e2e


def new_room() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"


async def test_two_clients_chat(system):
    room = new_room()
    # Alice joins an empty room: her own joined, then ready.
    alice = await ChatClient.connect(system.ws_url, room)
    assert await alice.join("alice") == [{"joined": "alice"}, {"ready": True}]

    # Bob joins: he is told alice is here, then his own joined, then ready; alice hears of him.
    bob = await ChatClient.connect(system.ws_url, room)
    assert await bob.join("bob") == [{"joined": "alice"}, {"joined": "bob"}, {"ready": True}]
    assert await alice.recv() == {"joined": "bob"}

    # Each message reaches everyone, sender included, with a strictly increasing timestamp.
    await alice.send({"message": "hi bob"})
    await bob.send({"message": "hi alice"})
    seen_by_alice = [await alice.recv(), await alice.recv()]
    seen_by_bob = [await bob.recv(), await bob.recv()]
    assert seen_by_alice == seen_by_bob
    assert {(f["name"], f["message"]) for f in seen_by_alice} == {
        ("alice", "hi bob"),
        ("bob", "hi alice"),
    }
    assert seen_by_alice[0]["timestamp"] < seen_by_alice[1]["timestamp"]

    # Alice leaves: bob is told.
    await alice.close()
    assert await bob.recv() == {"quit": "alice"}
    await bob.close()


async def test_a_newcomer_gets_who_is_here_and_the_last_100_messages(system):
    room = new_room()
    (alice,) = await joined(system, room, "alice")
    for i in range(105):
        await alice.send({"message": f"m{i}"})
    await alice.recv_until(lambda f: f.get("message") == "m104")

    # Before naming itself, the newcomer is sent nothing; the queue flushes on its name frame.
    carol = await ChatClient.connect(system.ws_url, room)
    frames = await carol.join("")  # an empty name is "anonymous"
    assert frames[0] == {"joined": "alice"}
    history = [f["message"] for f in frames if "message" in f]
    assert history == [f"m{i}" for i in range(5, 105)]
    assert frames[-2:] == [{"joined": "anonymous"}, {"ready": True}]
    await carol.close()
    await alice.close()


async def test_bad_frames_get_clear_errors_and_change_nothing(system):
    room = new_room()
    (alice,) = await joined(system, room, "alice")
    bad = [
        ("not json", "Frame is not valid JSON."),
        (b"\x00\x01", "Binary frames are not supported; send JSON text frames."),
        ("[1]", "Frame must be a JSON object."),
        ({"message": 42}, "message must be a string."),
        ({"message": "x" * 257}, "Message too long."),
        ({"message": "hi", "to": "bob"}, 'Unknown key(s) "to"; send {"message": "..."}.'),
        ("x" * 10_000, "Frame too large: at most 4096 bytes."),
        ("[" * 2000 + "]" * 2000, "Frame is nested too deeply."),
    ]
    for frame, error in bad:
        await alice.send(frame)
        assert await alice.recv() == {"error": error}

    # The socket and the room are still healthy, and none of the bad frames was stored.
    await alice.send({"message": "still here"})
    assert (await alice.recv())["message"] == "still here"
    bob = await ChatClient.connect(system.ws_url, room)
    history = [f["message"] for f in await bob.join("bob") if "message" in f]
    assert history == ["still here"]
    await bob.close()
    await alice.close()


async def test_an_overlong_name_is_refused_and_the_socket_closed_with_1009(system):
    client = await ChatClient.connect(system.ws_url, new_room())
    await client.send({"name": "n" * 33})
    assert await client.recv() == {"error": "Name too long."}
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await client.recv()
    assert closed.value.rcvd.code == 1009


async def test_http_routes_speak_the_demo_protocol(system):
    # A private room id is 64 hex as plain text.
    created = http(system, "POST", "/api/room")
    assert created.status_code == 200 and created.headers["content-type"].startswith("text/plain")
    assert is_private_room_id(created.text)

    # The websocket path refuses plain HTTP, and names over 32 chars.
    def answer(path: str) -> tuple[int, str]:
        response = http(system, "GET", path)
        return response.status_code, response.text

    assert answer("/api/room/lobby/websocket") == (400, "expected websocket")
    assert answer(f"/api/room/{'x' * 33}/websocket") == (404, "Name too long")
    nothing = http(system, "GET", "/api/nothing-here")
    assert nothing.status_code == 404 and nothing.json()["error"]["code"] == "not_found"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"{system.ws_url}/api/room/{'x' * 33}/websocket")
    assert refused.value.response.status_code == 404


async def test_private_rooms_are_reachable_only_once_created(system):
    # An id nobody created: a clear error, then the socket is closed.
    stranger = await ChatClient.connect(system.ws_url, "0" * 64)
    assert await stranger.recv() == {"error": "No such room."}
    with pytest.raises(websockets.ConnectionClosed):
        await stranger.recv()

    # A created one works like any room.
    room = http(system, "POST", "/api/room").text
    alice, bob = await joined(system, room, "alice", "bob")
    await alice.send({"message": "psst"})
    assert (await bob.recv_until(lambda f: "message" in f))[-1]["message"] == "psst"
    await alice.close()
    await bob.close()


async def test_sockets_survive_a_crash_of_the_room_service(system):
    room = new_room()
    (alice,) = await joined(system, room, "alice")
    await alice.send({"message": "before"})
    await alice.recv_until(lambda f: f.get("message") == "before")

    # kill -9 the room service and start a new one; the gateway keeps the socket.
    old = system.rooms.pop()
    old.kill()
    system.start_room()

    # The same socket goes on: the room is rebuilt from its stream, membership included.
    await alice.send({"message": "after"})
    frames = await alice.recv_until(lambda f: "message" in f or "error" in f, timeout=10)
    assert frames[-1]["message"] == "after"
    bob = await ChatClient.connect(system.ws_url, room)
    history = [f["message"] for f in await bob.join("bob") if "message" in f]
    assert history == ["before", "after"]
    await bob.close()
    await alice.close()


async def test_the_portable_writer_speaks_the_same_protocol(tmp_path):
    # With compression negotiated, frames cannot be written straight to the transport; the
    # gateway falls back to queued ASGI sends. Same protocol, same errors, same closes.
    from services.localsystem import LocalSystem

    system = LocalSystem(
        tmp_path / "deflate", extra_env={"DURACHAT_WS_PER_MESSAGE_DEFLATE": "true"}
    ).start()
    try:
        room = new_room()
        alice = await ChatClient.connect(system.ws_url, room)
        assert await alice.join("alice") == [{"joined": "alice"}, {"ready": True}]
        assert alice.ws.protocol.extensions, "permessage-deflate was not negotiated"
        bob = await ChatClient.connect(system.ws_url, room)
        await bob.join("bob")
        assert await alice.recv() == {"joined": "bob"}
        await alice.send("not json")
        assert await alice.recv() == {"error": "Frame is not valid JSON."}
        assert (await alice.say("compressed"))["message"] == "compressed"
        assert (await bob.recv_until(lambda f: "message" in f))[-1]["message"] == "compressed"

        too_long = await ChatClient.connect(system.ws_url, room)
        await too_long.send({"name": "n" * 33})
        assert await too_long.recv() == {"error": "Name too long."}
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await too_long.recv()
        assert closed.value.rcvd.code == 1009
        await alice.close()
        await bob.close()
    finally:
        system.stop()


async def test_the_first_socket_into_a_cold_room_sees_its_history_once(system):
    # A room loaded by a new owner says its last commit again (its predecessor may have died
    # before broadcasting it); the socket whose arrival loaded it must see every message once.
    import nats

    from contracts.room import JoinRoom, PostMessage
    from contracts.subjects import ROOM, command_subject

    room = new_room()
    nc = await nats.connect(system.nats.url)
    for command in (JoinRoom(session_id="bot", name="bot"),
                    *(PostMessage(session_id="bot", text=t) for t in ("one", "two", "three"))):
        await nc.request(command_subject(ROOM, room), command.model_dump_json().encode(), 10)
    await nc.close()

    # The room service is replaced (a clean stop hands its partitions over at once), so the
    # room is cold, and no socket of this gateway is in it.
    old = system.rooms.pop()
    assert old.stop() == 0
    system.start_room()

    carol = await ChatClient.connect(system.ws_url, room)
    frames = await carol.join("carol")
    assert [f["message"] for f in frames if "message" in f] == ["one", "two", "three"]
    assert (await carol.say("four"))["message"] == "four"
    assert carol.messages() == ["one", "two", "three", "four"]
    await carol.close()


async def test_invalid_utf8_closes_only_that_socket_with_1007(system):
    room = new_room()
    bob, mallory = await joined(system, room, "bob", "mallory")
    # A text frame that is not UTF-8: the WebSocket protocol itself refuses it (1007).
    async with mallory.ws.send_context():
        mallory.ws.protocol.send_text(b"\xff\xfe{")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await mallory.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    # The room and everyone else in it carry on.
    assert (await bob.recv_until(lambda f: "quit" in f))[-1] == {"quit": "mallory"}
    assert (await bob.say("still fine"))["message"] == "still fine"
    await bob.close()
