"""A client that stops reading is disconnected once its unsent frames pass a bound; the
gateway does not buffer for it without limit, and the others in the room are unaffected."""

from __future__ import annotations

import json
import socket
import time

import pytest
import websockets

from services.localsystem import LocalSystem
from tests.e2e.chat_clients import ChatClient

pytestmark = pytest.mark.e2e

LIMIT = 64 * 1024


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    system = LocalSystem(
        tmp_path_factory.mktemp("slow"), extra_env={"DURACHAT_SEND_BUFFER_LIMIT": str(LIMIT)}
    ).start()
    yield system
    system.stop()


async def test_a_client_that_stops_reading_is_disconnected(bounded):
    room = "slow-reader"
    # The slow client joins with a tiny receive buffer, then never reads again.
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", bounded.port))
    slow = await websockets.connect(
        f"{bounded.ws_url}/api/room/{room}/websocket", sock=raw, max_queue=1
    )
    await slow.send(json.dumps({"name": "slow"}))

    fast = await ChatClient.connect(bounded.ws_url, room)
    await fast.join("fast")
    rss_before = rss_kib(bounded.gateway.pid)

    # The fast client chats at full speed until the room says the slow one quit: the
    # gateway dropped it. Every message is echoed back to the fast client in time.
    sent, echoes, seen = 0, [], 0

    def slow_quit() -> bool:
        nonlocal seen
        new, seen = fast.frames[seen:], len(fast.frames)
        return any(f.get("quit") == "slow" for f in new)

    while not slow_quit():
        assert sent < 30_000, "the slow client was never disconnected"
        started = time.perf_counter()
        assert (await fast.say(f"{sent:05d} " + "x" * 240))["name"] == "fast"
        echoes.append(time.perf_counter() - started)
        sent += 1
    # Its own round trips stayed within the chat bench's target while the slow one lagged.
    p99 = sorted(echoes)[int(len(echoes) * 0.99)]
    print(f"slow client dropped after {sent} messages; echo p99 {p99 * 1000:.1f} ms")
    assert p99 < 0.015

    # The gateway kept no backlog for the slow client: its memory barely moved.
    assert rss_kib(bounded.gateway.pid) - rss_before < 16 * 1024

    # When the slow client reads again, it finds a part of the chat, then the end.
    received = 0
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            frame = json.loads(await slow.recv())
            received += "message" in frame
    assert received < sent
    assert closed.value.rcvd is None or closed.value.rcvd.code == 1008
    await fast.close()
