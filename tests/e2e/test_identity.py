"""Tokens bind a user id to a socket; bad ones are refused before the upgrade; a gateway
outside development will not start with the placeholder secret."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
import websockets

from services.gateway.identity import PLACEHOLDER_SECRET, sign
from tests.e2e.chat_clients import ChatClient

pytestmark = pytest.mark.e2e


async def test_a_token_binds_its_user_to_the_socket(system):
    room = f"id-{uuid.uuid4().hex[:8]}"
    token = sign("user-42", PLACEHOLDER_SECRET)  # the test system runs in development
    client = ChatClient(await websockets.connect(f"{system.ws_url}/api/room/{room}/websocket?token={token}"))
    assert (await client.join("alice"))[-1] == {"ready": True, "user": "user-42"}
    await client.close()

    # Without a token: anonymous, the plain demo frame.
    anonymous = await ChatClient.connect(system.ws_url, room)
    assert (await anonymous.join("bob"))[-1] == {"ready": True}
    await anonymous.close()


@pytest.mark.parametrize(
    "token, reason",
    [
        (sign("user-42", "some-other-secret-entirely"), b"Invalid token: bad signature."),
        (sign("user-42", PLACEHOLDER_SECRET, ttl=-1), b"Invalid token: expired."),
        ("garbage", b"Invalid token: not a durachat token."),
    ],
)
async def test_a_bad_token_is_refused_before_the_upgrade(system, token, reason):
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"{system.ws_url}/api/room/lobby/websocket?token={token}")
    assert refused.value.response.status_code == 401
    assert refused.value.response.body == reason


def test_a_gateway_outside_development_refuses_the_placeholder_secret():
    env = {k: v for k, v in os.environ.items() if k != "DURACHAT_TOKEN_SECRET"}
    env.update(DURACHAT_ENV="production", DURACHAT_NATS_URL="nats://127.0.0.1:1")
    result = subprocess.run(
        [sys.executable, "-m", "services.gateway"], env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DURACHAT_TOKEN_SECRET must be set" in result.stderr
