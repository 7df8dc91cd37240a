"""The web client under the chat demo's per-IP rate limit (scaled down, as in
tests/e2e/test_rate_limits.py): nothing typed is lost, a refused message is marked and sent
again after the server's retry_after (or the client's own estimate of the demo's rule), and a
refused name frame is sent again instead of leaving the tab "connecting" forever. Every tab
here is 127.0.0.1: they share one limit, as tabs on one machine do."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from services.localsystem import LocalSystem
from tests.conftest import PARTITIONS, running
from tests.e2e import test_browser as stories
from tests.e2e.test_browser import WIDTHS, choose_name, expect_ready, join_public_room, shot

chromium = stories.chromium
open_tab = stories.open_tab

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

from playwright.sync_api import expect  # noqa: E402

INTERVAL, GRACE = 0.5, 2.0  # the demo's 5 s / 20 s, scaled down tenfold: a burst of 5


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Iterator[LocalSystem]:
    local = LocalSystem(
        tmp_path_factory.mktemp("browser-limits"),
        partitions=PARTITIONS,
        extra_env={
            "DURACHAT_RATE_LIMIT": "true",  # the other test systems run without it
            "DURACHAT_RATE_INTERVAL": str(INTERVAL),
            "DURACHAT_RATE_GRACE": str(GRACE),
        },
    )
    with running(local):
        yield local


def rested(page) -> None:
    """Wait until the IP's burst is back (the limiter refills one frame per INTERVAL)."""
    page.wait_for_timeout(int((GRACE + INTERVAL) * 1000))


@WIDTHS
def test_a_burst_is_kept_pending_refused_and_retried_until_all_arrive(open_tab, system, width) -> None:
    # Problem 1: of a burst, the refused messages were lost (the input cleared, no word).
    room = f"br-rl-{uuid.uuid4().hex[:12]}"
    alice, bob = open_tab(width=width), open_tab()
    for page, name in [(alice, "alice"), (bob, "bob")]:
        choose_name(page, name)
        join_public_room(page, room)
        expect_ready(page)
    rested(alice)
    texts = [f"burst {i}" for i in range(8)]
    for text in texts:
        alice.fill("#message-input", text)
        alice.keyboard.press("Enter")
    expect(alice.locator("#message-input")).to_have_value("")

    # Some are refused: marked as such, with when they go again; still in the log.
    refused = alice.locator("#messages li.pending.refused").first
    expect(refused).to_be_visible()
    expect(refused.locator(".pending-note")).to_contain_text("Not sent: rate limit")
    expect(refused.locator(".pending-note")).to_contain_text("Retrying in")
    expect(refused.locator("button.retry")).to_be_visible()
    shot(alice, system, "refused")

    # All arrive, once each and in the order typed, without anyone doing anything.
    for page in (alice, bob):
        expect(page.locator("#messages li.message:not(.pending) .text")).to_have_text(texts, timeout=40_000)
    expect(alice.locator("#messages li.pending")).to_have_count(0)
    shot(alice, system, "retried")


def test_a_refused_name_frame_is_sent_again_and_a_refused_name_says_so(open_tab, system) -> None:
    # Problem 2: the 5th and 6th tab from one IP stayed "connecting" with an empty roster.
    room = f"br-rl-{uuid.uuid4().hex[:12]}"
    first = open_tab()
    rested(first)
    tabs = [first] + [open_tab() for _ in range(6)]
    for i, page in enumerate(tabs):
        choose_name(page, f"tab{i}")
        join_public_room(page, room)
    for page in tabs:
        expect(page.locator("#status")).to_have_attribute("data-state", "ready", timeout=40_000)
    for page in tabs:
        expect(page.locator("#roster li")).to_have_count(len(tabs), timeout=20_000)

    # A name the server refuses (a look-alike of "AI" the page cannot tell): back to the name
    # step with the server's reason, the input usable; another name then joins the room.
    page = open_tab()
    choose_name(page, "\u0410\u0406")  # Cyrillic А and І
    join_public_room(page, room)
    expect(page.locator("#step-name")).to_be_visible(timeout=40_000)
    expect(page.locator("#name-error")).to_contain_text("reserved")
    expect(page.locator("#name-input")).to_be_enabled()
    expect(page.locator("#name-input")).to_be_focused()
    page.fill("#name-input", "dana")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_have_attribute("data-state", "ready", timeout=40_000)
    expect(page.locator("#room-title")).to_have_text(f"#{room}")


