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
    WIDTHS,
    choose_name,
    chromium,
    expect_ready,
    join_public_room,
    open_tab,
    send,
    shot,
)
from tests.fakes.gemini import Held, Reply

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
    # Who asked is shown in history too (it was only on the live bubble).
    expect(carol.locator("#messages li.ai .ai-who")).to_have_text("AI, answering alice")
    alice.screenshot(path=str(system.data_dir / "ai-reply.png"))


MARKDOWN = (
    "Here is **how** to do it:\n\n"
    "1. Open `settings.toml`\n"
    "2. Set a value:\n\n"
    "```toml\nrate = 5\n```\n\n"
    "See [the docs](https://example.com/docs) or [this](javascript:alert(1)).\n\n"
    "<script>alert('x')</script><img src=x onerror=alert(2)> ![pic](https://example.com/p.png)"
)


@pytest.fixture(scope="module")
def ai_room(chromium, system, gemini) -> Iterator[str]:  # noqa: F811 (the fixture)
    """A room whose history holds a question to the AI and its markdown reply."""
    room = f"br-md-{uuid.uuid4().hex[:16]}"
    context = chromium.new_context()
    alice = context.new_page()
    alice.goto(system.base_url + "/")
    choose_name(alice, "alice")
    join_public_room(alice, room)
    expect_ready(alice)
    send(alice, "hi all")
    gemini.script(Reply([MARKDOWN[:40], MARKDOWN[40:]]))
    send(alice, "@ai how do I set the rate?")
    # Live: the streamed text is plain until the final message, which is rendered.
    expect(alice.locator("#messages li.ai-final .ai-text.md strong")).to_have_text("how")
    yield room
    context.close()


@WIDTHS
def test_an_ai_reply_in_history_is_markdown_rendered_safely(open_tab, ai_room, system, width) -> None:  # noqa: F811
    reader = open_tab(width=width)
    choose_name(reader, "reader")
    join_public_room(reader, ai_room)
    expect_ready(reader)
    text = reader.locator("#messages li.ai .ai-text")
    expect(reader.locator("#messages li.ai .ai-who")).to_have_text("AI, answering alice")
    expect(text.locator("strong")).to_have_text("how")
    expect(text.locator("ol > li")).to_have_count(2)
    expect(text.locator("pre code")).to_have_text("rate = 5\n")
    docs = text.locator('a[href="https://example.com/docs"]')
    expect(docs).to_have_text("the docs")
    expect(docs).to_have_attribute("rel", "noopener noreferrer nofollow")
    # Nothing that runs or loads: no script, no image, no javascript: link (no dialog
    # either: open_tab fails the test on one); raw HTML is shown as text.
    expect(reader.locator("#messages script, #messages img, #messages [onerror]")).to_have_count(0)
    expect(text.locator('a[href^="javascript"]')).to_have_count(0)
    expect(text).to_contain_text("<script>alert('x')</script>")
    expect(text.locator('a[href="https://example.com/p.png"]')).to_have_text("pic")
    shot(reader, system, "ai-history")
