"""The web client when the gateway goes away and comes back: the tab says it is disconnected
and when it tries again (with "Retry now"), keeps what is typed meanwhile, and is back within
about a second of the gateway answering again, however long the outage was."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.e2e import test_browser as stories
from tests.e2e.test_browser import DESKTOP, PHONE, choose_name, expect_ready, join_public_room, shot

chromium = stories.chromium
open_tab = stories.open_tab

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

from playwright.sync_api import expect  # noqa: E402


def test_a_lost_gateway_shows_a_countdown_keeps_typing_and_reconnects_soon_after(open_tab, system) -> None:
    # Problem 5: only a red dot and a grey input; up to 10 s to reconnect after the server
    # was back.
    room = f"br-re-{uuid.uuid4().hex[:12]}"
    phone, desk = open_tab(width=PHONE), open_tab(width=DESKTOP)
    for page, name in [(phone, "pat"), (desk, "dee")]:
        choose_name(page, name)
        join_public_room(page, room)
        expect_ready(page)

    assert system.gateway is not None
    system.gateway.stop()
    for page in (phone, desk):
        expect(page.locator("#status")).to_have_attribute("data-state", "waiting")
        expect(page.locator("#status")).to_contain_text("Offline · reconnecting in")
        expect(page.locator("#retry-now")).to_be_visible()
        expect(page.locator("#message-input")).to_be_enabled()

    # Typed while away: kept, shown as waiting for the connection.
    phone.fill("#message-input", "typed while offline")
    phone.keyboard.press("Enter")
    expect(phone.locator("#messages li.pending .pending-note")).to_have_text("waiting for the connection…")
    # "Retry now" tries at once (and fails again, the gateway is still down).
    attempts = phone.evaluate("() => durachat.state.backoff")
    phone.click("#retry-now")
    phone.wait_for_function("(b) => durachat.state.backoff > b", arg=attempts)
    for page in (phone, desk):
        shot(page, system, "disconnected")

    # A longer outage: the tabs now wait 8 s between attempts (the next wait is the 10 s cap)
    for page in (phone, desk):
        page.wait_for_function("() => durachat.state.backoff === 10000", timeout=30_000)
    system.gateway = system.service("services.gateway", "gateway").start()
    system.wait_healthy(30)
    back = time.monotonic()
    # ... yet both tabs are back soon after the gateway answers, not at the end of the wait.
    took = {}
    for page, name in [(phone, "phone"), (desk, "desk")]:
        expect_ready_within(page, 4_000)
        took[name] = round(time.monotonic() - back, 2)
    print("ready again after the gateway was healthy:", took)
    assert max(took.values()) < 4, took
    expect(desk.locator("#messages li.message .text")).to_have_text(["typed while offline"])
    expect(phone.locator("#messages li.pending")).to_have_count(0)
    expect(phone.locator("#messages li.message .text")).to_have_text(["typed while offline"])


def expect_ready_within(page, timeout_ms: int) -> None:
    expect(page.locator("#status")).to_have_attribute("data-state", "ready", timeout=timeout_ms)
