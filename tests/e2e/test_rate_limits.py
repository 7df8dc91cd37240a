"""Per-IP limits at the gateway, end to end: the chat demo's refusal frame, the limit shared
through the ratelimit service or decided locally when it is away, the per-IP socket cap, and
X-Forwarded-For believed only from a trusted proxy."""

from __future__ import annotations

import random
import time
import uuid

import pytest
import websockets

from contracts.ratelimit import RATE_LIMITED
from services.localsystem import LocalSystem
from tests.e2e.chat_clients import ChatClient
from tests.e2e.test_observe import scrape, value
from tests.support import eventually

pytestmark = pytest.mark.e2e

INTERVAL, GRACE = 0.5, 2.0  # the demo's 5 s / 20 s, scaled down tenfold: a burst of 5


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    system = LocalSystem(
        tmp_path_factory.mktemp("limited"),
        extra_env={
            "DURACHAT_RATE_LIMIT": "true",
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


SPACING = 0.05  # s between frames of a burst: far more than a round trip to the limiter


async def spaced() -> None:
    """Let SPACING pass: frames of a burst "spaced by round trips", as the demo needs them
    (it refuses a frame that arrives while the previous one's charge is still in flight)."""
    started = time.monotonic()
    await eventually(lambda: time.monotonic() - started >= SPACING, what="the spacing")


async def use_up_the_burst(client: ChatClient) -> float:
    """After the name frame, four messages pass (a burst of five frames, each sent once the
    previous one is seen: spaced by round trips); the next is refused with the chat demo's
    own frame, plus how long to wait (`retry_after`), which is returned."""
    for text in ("one", "two", "three", "four"):
        await spaced()
        assert (await client.say(text)).get("message") == text, text
    await spaced()
    await client.send({"message": "five"})
    refused = await client.recv()
    wait = refused.pop("retry_after")
    assert refused == {"error": RATE_LIMITED}
    # The fifth charge announced INTERVAL (2.5 - 2.0 ahead); part of it may have passed.
    assert 0 < wait <= INTERVAL
    return wait


def refusals(system) -> dict[str, float]:
    """The gateway's `durachat_ratelimit_refusals_total` by source."""
    samples = scrape(f"{system.base_url}/metrics")[1]
    return {source: value(samples, "durachat_ratelimit_refusals_total", source=source)
            for source in ("in_flight", "cooldown")}


async def test_a_burst_of_five_passes_then_the_demo_refusal_frame(limited):
    room = f"rl-{uuid.uuid4().hex[:8]}"
    before = refusals(limited)
    client = await connect(limited, room, "198.51.100.10")
    # The name frame and four messages pass (five frames), the sixth frame is refused.
    await client.join("burst")
    wait = await use_up_the_burst(client)
    refused_at = time.monotonic()

    # Refused again while the cooldown runs: each frame gets its own refusal, and nothing
    # of them is posted.
    await client.send({"message": "still five"})
    again = await client.recv()
    assert again["error"] == RATE_LIMITED and again["retry_after"] <= wait

    # Once `retry_after` has passed, one frame passes again.
    await eventually(lambda: time.monotonic() - refused_at > wait, what="the announced wait")
    assert (await client.say("later"))["message"] == "later"
    assert "still five" not in client.messages()
    # Both refusals were the announced cooldown's, none a charge in flight.
    after = refusals(limited)
    assert (after["cooldown"] - before["cooldown"], after["in_flight"] - before["in_flight"]) == (2, 0)
    await client.close()


async def test_a_frame_right_behind_another_is_refused_while_its_charge_is_in_flight(limited):
    room = f"rl-{uuid.uuid4().hex[:8]}"
    client = await connect(limited, room, "198.51.100.11")
    await client.join("eager")
    await spaced()
    before = refusals(limited)
    await client.send({"message": "first"})
    await client.send({"message": "right behind"})  # before the first's charge is answered
    assert (await client.recv_until(lambda f: "message" in f or "error" in f))[-1]["message"] == "first"
    assert (await client.recv())["error"] == RATE_LIMITED
    after = refusals(limited)
    assert (after["in_flight"] - before["in_flight"], after["cooldown"] - before["cooldown"]) == (1, 0)
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
        samples = scrape(f"{limited.base_url}/metrics")[1]
        assert value(samples, "durachat_ratelimit_fallback_active") == 1
    finally:
        limited.start_ratelimit()

    # Once the service answers a charge again, the gateway no longer limits by itself.
    async def answered_again() -> bool:
        client = await connect(limited, f"rl-{uuid.uuid4().hex[:8]}", f"198.51.100.{random.randint(50, 250)}")
        await client.join("back")
        await client.close()
        return value(scrape(f"{limited.base_url}/metrics")[1], "durachat_ratelimit_fallback_active") == 0
    await eventually(answered_again, 20, "the fallback to end")
