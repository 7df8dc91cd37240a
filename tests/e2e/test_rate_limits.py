"""Per-IP limits at the gateway, end to end: the chat demo's refusal frame, the limit shared
through the ratelimit service or decided locally when it is away, the per-IP socket cap, and
X-Forwarded-For believed only from a trusted proxy."""

from __future__ import annotations

import time
import uuid

import pytest
import websockets

from contracts.ratelimit import RATE_LIMITED
from services.localsystem import LocalSystem
from tests.e2e.chat_clients import ChatClient
from tests.support import eventually

pytestmark = pytest.mark.e2e

INTERVAL, GRACE = 0.5, 2.0  # the demo's 5 s / 20 s, scaled down tenfold: a burst of 4


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    system = LocalSystem(
        tmp_path_factory.mktemp("limited"),
        extra_env={
            "DURACHAT_RATE_INTERVAL": str(INTERVAL),
            "DURACHAT_RATE_GRACE": str(GRACE),
            "DURACHAT_MAX_SOCKETS_PER_IP": "6",
            "DURACHAT_TRUSTED_PROXIES": '["127.0.0.1"]',
        },
    ).start()
    yield system
    system.stop()


async def connect(system, room: str, forwarded_for: str) -> ChatClient:
    return ChatClient(await websockets.connect(
        f"{system.ws_url}/api/room/{room}/websocket",
        additional_headers={"X-Forwarded-For": forwarded_for},
    ))


async def use_up_the_burst(client: ChatClient) -> None:
    """After the name frame, three messages pass (a burst of four frames); the next is
    refused with the chat demo's own frame."""
    for text in ("one", "two", "three"):
        assert (await client.say(text))["message"] == text
    await client.send({"message": "four"})
    assert await client.recv() == {"error": RATE_LIMITED}


async def test_a_burst_passes_then_the_demo_refusal_frame(limited):
    room = f"rl-{uuid.uuid4().hex[:8]}"
    client = await connect(limited, room, "198.51.100.10")
    # The name frame and three messages pass (four frames), the fifth frame is refused.
    await client.join("burst")
    await use_up_the_burst(client)

    # After one interval, one more frame passes.
    started = time.monotonic()
    await eventually(lambda: time.monotonic() - started > INTERVAL, what="one interval")
    assert (await client.say("later"))["message"] == "later"
    await client.close()


async def test_each_forwarded_address_has_its_own_limit_from_a_trusted_proxy(limited):
    room = f"rl-{uuid.uuid4().hex[:8]}"
    first = await connect(limited, room, "198.51.100.20")
    await first.join("first")
    await use_up_the_burst(first)
    # Another client behind the same proxy, another address: its own burst.
    second = await connect(limited, room, "198.51.100.21")
    await second.join("second")
    assert (await second.say("mine"))["message"] == "mine"
    await first.close()
    await second.close()


async def test_too_many_sockets_from_one_address_are_refused(limited):
    room = f"rl-{uuid.uuid4().hex[:8]}"
    held = [await connect(limited, room, "198.51.100.30") for _ in range(6)]
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(limited, room, "198.51.100.30")
    assert refused.value.response.status_code == 429
    assert b"Too many connections" in refused.value.response.body
    # Closing one makes room for one.
    await held.pop().close()
    async def reconnect():
        try:
            held.append(await connect(limited, room, "198.51.100.30"))
            return True
        except websockets.InvalidStatus:
            return False
    await eventually(reconnect, 10, "a socket to be let in again")
    for client in held:
        await client.close()


async def test_with_the_ratelimit_service_down_the_gateway_limits_locally(limited):
    # The ratelimit service stops: the gateway decides with the same rule itself.
    limited.ratelimit.stop()
    try:
        room = f"rl-{uuid.uuid4().hex[:8]}"
        client = await connect(limited, room, "198.51.100.40")
        await client.join("fallback")
        await use_up_the_burst(client)
        await client.close()
    finally:
        limited.start_ratelimit()
