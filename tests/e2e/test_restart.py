"""Data lives in the data dir and survives a restart of the whole system."""

from __future__ import annotations

import pytest

from services.localsystem import LocalSystem
from tests.e2e.chat_clients import ChatClient

pytestmark = pytest.mark.e2e


async def test_history_survives_a_restart_of_everything(tmp_path):
    # A first run: alice says something.
    system = LocalSystem(tmp_path / "data").start()
    try:
        alice = await ChatClient.connect(system.ws_url, "lobby")
        await alice.join("alice")
        assert (await alice.say("still there tomorrow?"))["message"] == "still there tomorrow?"
        await alice.close()
    finally:
        system.stop()

    # Everything stopped; a second run on the same data dir (new ports) has the history.
    system = LocalSystem(tmp_path / "data").start()
    try:
        bob = await ChatClient.connect(system.ws_url, "lobby")
        frames = await bob.join("bob")
        assert [f["message"] for f in frames if "message" in f] == ["still there tomorrow?"]
        await bob.close()
    finally:
        system.stop()
