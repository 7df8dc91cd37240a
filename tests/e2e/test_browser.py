"""The web client in headless Chromium against the whole system as real processes.

Each test is a short story told by people in browser tabs (one browser context per
person, so nothing is shared between them). Waits are Playwright's auto-waiting
`expect()` assertions on the page, never sleeps.

Uses Debian's chromium (/usr/bin/chromium), never a Playwright-downloaded browser. The
sync API is used from plain `def` tests: pytest-asyncio only runs `async def` tests in
its session loop, so no loop is running while these tests (and their fixtures) run.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.localsystem import LocalSystem

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PRIVATE_HASH = re.compile(r"#([0-9a-f]{64})$")

if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium package is missing (/usr/bin/chromium); CI installs it with apt",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=10_000)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One headless Chromium for the module; each tab gets its own context."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_tab(chromium: Browser, system: LocalSystem) -> Iterator[Callable[..., Page]]:
    """Opens a fresh tab (a new browser context) on the client; fails the test on any
    uncaught page error or JS dialog (an alert would mean injected markup ran)."""
    contexts = []
    problems: list[str] = []

    def _open(fragment: str = "") -> Page:
        context = chromium.new_context(viewport={"width": 1000, "height": 700})
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda err: problems.append(f"page error: {err}"))

        def on_dialog(dialog) -> None:
            problems.append(f"unexpected {dialog.type} dialog: {dialog.message!r}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.goto(system.base_url + "/" + (f"#{fragment}" if fragment else ""))
        return page

    yield _open
    for context in contexts:
        context.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def room() -> str:
    """A public room name no other test uses (at most 32 characters)."""
    return f"br-{uuid.uuid4().hex[:20]}"


# ---------------------------------------------------------------- steps


def choose_name(page: Page, name: str) -> None:
    expect(page.locator("#name-input")).to_be_visible()
    page.fill("#name-input", name)
    page.press("#name-input", "Enter")


def join_public_room(page: Page, room: str) -> None:
    expect(page.locator("#room-input")).to_be_visible()
    page.fill("#room-input", room)
    page.click("#join-room")


def expect_ready(page: Page) -> None:
    expect(page.locator("#status")).to_have_attribute("data-state", "ready")
    expect(page.locator("#message-input")).to_be_enabled()


def send(page: Page, text: str) -> None:
    page.fill("#message-input", text)
    page.click("#send")
    # The input is cleared at once; the message stays pending until the server echoes it.
    expect(page.locator("#message-input")).to_have_value("")
    expect(page.locator("#messages li.pending")).to_have_count(0)


def expect_messages(page: Page, messages: list[tuple[str, str]]) -> None:
    """Exactly these (author, text) chat messages, in order."""
    expect(page.locator("#messages li.message")).to_have_count(len(messages))
    expect(page.locator("#messages li.message .author")).to_have_text([a for a, _ in messages])
    expect(page.locator("#messages li.message .text")).to_have_text([t for _, t in messages])


def expect_roster(page: Page, names: list[str]) -> None:
    expect(page.locator("#roster li")).to_have_count(len(names))
    for name in names:
        expect(page.locator(f'#roster li[data-name="{name}"]')).to_have_text(name)


# ---------------------------------------------------------------- stories


def test_two_tabs_chat_in_a_public_room(open_tab, room: str, system: LocalSystem) -> None:
    # Alice and Bob each open the client in their own tab.
    alice, bob = open_tab(), open_tab()

    # Each picks a name, then the same public room; both connect.
    for page, name in [(alice, "alice"), (bob, "bob")]:
        choose_name(page, name)
        join_public_room(page, room)
        expect(page.locator("#room-title")).to_have_text(f"#{room}")
    expect_ready(alice)
    expect_ready(bob)

    # Alice says hello; both tabs show it with her name.
    send(alice, "hello bob")
    for page in (alice, bob):
        expect_messages(page, [("alice", "hello bob")])

    # Bob replies; both tabs show the two messages in order.
    send(bob, "hi alice!")
    for page in (alice, bob):
        expect_messages(page, [("alice", "hello bob"), ("bob", "hi alice!")])

    # Bob's roster lists both of them.
    expect_roster(bob, ["alice", "bob"])

    # The URL now names the room, so it can be shared.
    expect(bob).to_have_url(re.compile(re.escape(f"#{room}") + "$"))

    # A picture of the chat for a human to look at, kept with the system's logs.
    bob.screenshot(path=str(system.data_dir / "chat.png"))


def test_a_later_tab_sees_the_history(open_tab, room: str) -> None:
    # Alice and Bob chat in a fresh room.
    alice, bob = open_tab(), open_tab()
    for page, name in [(alice, "alice"), (bob, "bob")]:
        choose_name(page, name)
        join_public_room(page, room)
        expect_ready(page)
    send(alice, "first")
    expect_messages(bob, [("alice", "first")])
    send(bob, "second")
    expect_messages(alice, [("alice", "first"), ("bob", "second")])

    # Carol joins later and is shown what was said before she came.
    carol = open_tab()
    choose_name(carol, "carol")
    join_public_room(carol, room)
    expect_ready(carol)
    expect_messages(carol, [("alice", "first"), ("bob", "second")])

    # Her own message reaches the others after the history.
    send(carol, "third")
    for page in (alice, bob, carol):
        expect_messages(page, [("alice", "first"), ("bob", "second"), ("carol", "third")])


def test_private_room_shared_by_link(open_tab) -> None:
    # Alice names herself and creates a private room.
    alice = open_tab()
    choose_name(alice, "alice")
    expect(alice.locator("#create-private")).to_be_visible()
    alice.click("#create-private")

    # Her URL fragment becomes the room's 64-hex id, and she is connected.
    expect(alice).to_have_url(PRIVATE_HASH)
    room_id = PRIVATE_HASH.search(alice.url).group(1)
    expect(alice.locator("#room-title")).to_have_text("Private room")
    expect_ready(alice)

    # Bob opens the shared link; after naming himself he lands in that room directly.
    bob = open_tab(room_id)
    choose_name(bob, "bob")
    expect(bob.locator("#room-title")).to_have_text("Private room")
    expect_ready(bob)
    expect_roster(bob, ["alice", "bob"])

    # They chat.
    send(bob, "found you")
    send(alice, "welcome")
    for page in (alice, bob):
        expect_messages(page, [("bob", "found you"), ("alice", "welcome")])


def test_markup_in_a_message_is_shown_as_text(open_tab, room: str) -> None:
    # Mallory joins a room with Alice and sends HTML meant to run script.
    payload = "<img src=x onerror=alert(1)> <b>bold</b>"
    alice, mallory = open_tab(), open_tab()
    for page, name in [(alice, "alice"), (mallory, "<i>mallory</i>")]:
        choose_name(page, name)
        join_public_room(page, room)
        expect_ready(page)
    send(mallory, payload)

    # Both tabs show the payload and the name as literal text ...
    for page in (alice, mallory):
        expect_messages(page, [("<i>mallory</i>", payload)])
        # ... and no element was made from it (no dialog either: see open_tab).
        expect(page.locator("#messages img, #messages b, #messages i")).to_have_count(0)
        expect(page.locator("#roster i")).to_have_count(0)
