"""The web client shows a streamed AI reply: headless Chromium against the whole system as
real processes, with the context service's google-genai client pointed at the local Gemini
fake, whose chunks the test releases one at a time (so "streaming" is seen, not raced)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from services.localsystem import LocalSystem
from tests.conftest import PARTITIONS, gemini_env, running
from tests.e2e.test_browser import (  # noqa: F401  (fixtures, used by name)
    CHROMIUM,
    choose_name,
    chromium,
    expect_ready,
    join_public_room,
    open_tab,
    send,
)
from tests.fakes.gemini import Held

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

from playwright.sync_api import expect  # noqa: E402


@pytest.fixture(scope="module")
def system(tmp_path_factory, gemini) -> Iterator[LocalSystem]:
    """The system `open_tab` serves, here with the fake Gemini behind the context service."""
    local = LocalSystem(
        tmp_path_factory.mktemp("browser-ai"), partitions=PARTITIONS, extra_env=gemini_env(gemini)
    )
    with running(local):
        yield local


def test_the_web_client_shows_an_ai_reply_growing_then_final(open_tab, gemini, system) -> None:  # noqa: F811 (the fixture)
    room = f"br-ai-{uuid.uuid4().hex[:16]}"
    alice, bob = open_tab(), open_tab()
    for page, name in [(alice, "alice"), (bob, "bob")]:
        choose_name(page, name)
        join_public_room(page, room)
        expect_ready(page)
    expect(alice.locator("#ai-hint")).to_be_visible()

    gemini.script(Held(["Streams ", "arrive ", "in pieces."]))
    send(alice, "@ai how do replies arrive?")
    bubbles = [page.locator("#messages li.ai") for page in (alice, bob)]

    # One piece released: both tabs show a streaming bubble holding just that piece.
    gemini.release()
    for bubble in bubbles:
        expect(bubble).to_have_attribute("data-ai-state", "streaming")
        expect(bubble.locator(".ai-text")).to_have_text("Streams ")
        expect(bubble.locator(".ai-who")).to_contain_text("Gemini")
    gemini.release()
    for bubble in bubbles:
        expect(bubble.locator(".ai-text")).to_have_text("Streams arrive ")

    # The last piece: the bubble is final, with the whole text, once, in both tabs.
    gemini.release()
    for bubble in bubbles:
        expect(bubble).to_have_attribute("data-ai-state", "final")
        expect(bubble.locator(".ai-text")).to_have_text("Streams arrive in pieces.")
        expect(bubble).to_have_count(1)

    # A tab that joins afterwards shows the reply from the room's history.
    carol = open_tab()
    choose_name(carol, "carol")
    join_public_room(carol, room)
    expect_ready(carol)
    expect(carol.locator("#messages li.ai .ai-text")).to_have_text("Streams arrive in pieces.")
    alice.screenshot(path=str(system.data_dir / "ai-reply.png"))
