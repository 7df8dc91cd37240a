"""The web client keeps its guest identity across reloads (an HttpOnly cookie), two browsers
are two people whatever their names, and a token in the page's address signs a browser in."""

from __future__ import annotations

import uuid

import pytest

from services.gateway.identity import PLACEHOLDER_SECRET, SESSION_COOKIE, mint
from services.localsystem import LocalSystem
from tests.e2e import test_browser as browser_stories
from tests.e2e.test_browser import choose_name, expect_ready, join_public_room, send

# The browser stories' fixtures: one headless Chromium, a fresh browser context per person.
chromium = browser_stories.chromium
open_tab = browser_stories.open_tab

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

from playwright.sync_api import Page, expect  # noqa: E402


def user_of(page: Page) -> str:
    page.wait_for_function("() => window.durachat && window.durachat.state.user")
    return page.evaluate("() => window.durachat.state.user")


def context_status(page: Page, user_id: str) -> int:
    return page.evaluate(
        "async (id) => (await fetch('/api/users/' + encodeURIComponent(id) + '/context')).status",
        user_id,
    )


def test_a_reload_keeps_your_guest_and_two_alices_are_two_people(open_tab, system: LocalSystem) -> None:
    room = f"br-id-{uuid.uuid4().hex[:12]}"
    # Two people open the client; each browser is a guest of its own.
    first, second = open_tab(), open_tab()
    one, two = user_of(first), user_of(second)
    assert one.startswith("guest:") and two.startswith("guest:") and one != two
    cookie = next(c for c in first.context.cookies() if c["name"] == SESSION_COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert first.evaluate("() => document.cookie") == ""  # scripts cannot read it

    # Both call themselves alice in the same room; the first asks the AI.
    for page in (first, second):
        choose_name(page, "alice")
        join_public_room(page, room)
        expect_ready(page)
    send(first, "@ai hello there")
    expect(first.locator("#messages li.ai-final")).to_have_count(1, timeout=20_000)

    # Each reads their own context only; a reload keeps who you are.
    assert context_status(first, one) == 200 and context_status(second, one) == 403
    first.reload()
    assert user_of(first) == one


def test_a_token_in_the_address_signs_the_browser_in(open_tab, system: LocalSystem) -> None:
    page = open_tab()
    token = mint("user-42", PLACEHOLDER_SECRET)  # the test system runs in development
    page.goto(f"{system.base_url}/?token={token}")
    assert user_of(page) == "user-42"
    assert "token" not in page.url  # kept in the cookie, not in the address bar or history
    page.reload()
    assert user_of(page) == "user-42"
    choose_name(page, "dana")
    join_public_room(page, f"br-id-{uuid.uuid4().hex[:12]}")
    expect_ready(page)


def test_signing_in_and_out_from_the_page(open_tab, system: LocalSystem) -> None:
    # Problem 6: the client could not pass a token. Now: a sign-in dialog, the verified user
    # shown, kept across a reload, and signing out makes the browser a guest again.
    room = f"br-id-{uuid.uuid4().hex[:12]}"
    page = open_tab()
    guest = user_of(page)
    choose_name(page, "erin")
    join_public_room(page, room)
    expect_ready(page)
    expect(page.locator("#whoami")).to_have_text("erin (guest)")

    page.click("#sign-in")
    expect(page.locator("#token-input")).to_be_focused()
    page.keyboard.type("not-a-token")
    page.keyboard.press("Enter")
    expect(page.locator("#sign-in-error")).to_contain_text("Not signed in: Invalid token")
    page.fill("#token-input", mint("user-7", PLACEHOLDER_SECRET))
    page.keyboard.press("Enter")
    expect(page.locator("#sign-in-dialog")).to_be_hidden()
    expect(page.locator("#whoami")).to_have_text("erin · signed in as user-7 ✓")
    expect_ready(page)  # the room is joined again as the verified user
    assert user_of(page) == "user-7"
    page.reload()
    expect_ready(page)
    expect(page.locator("#whoami")).to_have_text("erin · signed in as user-7 ✓")

    page.click("#sign-out")
    expect(page.locator("#whoami")).to_have_text("erin (guest)")
    expect_ready(page)
    assert user_of(page).startswith("guest:") and user_of(page) != guest
