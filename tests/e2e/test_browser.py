"""The web client in headless Chromium against the whole system as real processes.

Each test is a short story told by people in browser tabs (one browser context per
person, so nothing is shared between them). Waits are Playwright's auto-waiting
`expect()` assertions on the page, never sleeps.

Uses Debian's chromium (/usr/bin/chromium), never a Playwright-downloaded browser. The
sync API is used from plain `def` tests: pytest-asyncio only runs `async def` tests in
its session loop, so no loop is running while these tests (and their fixtures) run.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.localsystem import LocalSystem
from tests.support import eventually_blocking

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

    def _open(fragment: str = "", width: int = 1000, height: int = 700, **options) -> Page:
        context = chromium.new_context(viewport={"width": width, "height": height}, **options)
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


# ---------------------------------------------------------------- the issue-16 stories

PHONE, DESKTOP = 390, 1000
WIDTHS = pytest.mark.parametrize("width", [PHONE, DESKTOP], ids=["390px", "desktop"])


def shot(page: Page, system: LocalSystem, name: str) -> Path:
    """A screenshot for a human to look at: in $DURACHAT_SCREENSHOTS, else with the logs."""
    folder = Path(os.environ.get("DURACHAT_SCREENSHOTS") or system.data_dir / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    width = page.viewport_size["width"] if page.viewport_size else 0
    path = folder / f"{name}-{width}.png"
    page.screenshot(path=str(path))
    return path


def enter_room(page: Page, name: str, room: str) -> None:
    choose_name(page, name)
    join_public_room(page, room)
    expect_ready(page)


def test_a_stale_private_link_stops_and_says_what_to_do(open_tab, system) -> None:
    # Problem 3: a private room that does not exist is refused for good: one socket, one
    # message that says what to do, no reconnecting forever.
    stale = uuid.uuid4().hex + uuid.uuid4().hex
    page = open_tab(stale)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    choose_name(page, "alice")
    expect(page.locator("#banner")).to_be_visible()
    expect(page.locator("#banner-text")).to_contain_text("does not exist")
    expect(page.locator("#status")).to_have_attribute("data-state", "stopped")
    assert page.evaluate("() => [durachat.state.reconnectAt, durachat.state.reconnectTimer]") == [0, None]
    assert len(sockets) == 1
    expect(page.locator("#messages li.system")).to_have_count(0)
    expect(page.locator("#invite-box")).to_be_hidden()
    expect(page.locator("#message-input")).to_be_disabled()
    shot(page, system, "stale-link")
    # The way forward: choose another room (the focus is already on that button).
    expect(page.locator("#banner button").first).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#step-room")).to_be_visible()
    assert len(sockets) == 1


@WIDTHS
def test_the_newest_message_is_in_sight_after_joining(open_tab, room: str, width: int) -> None:
    # Problem 4: at 390 px the roster grew (by carol's own "joined", which comes after the
    # history) under the log, which was not scrolled again: ~20 px of the last message hidden.
    alice = open_tab()
    enter_room(alice, "alice", room)
    for i in range(25):
        alice.fill("#message-input", f"message number {i}")
        alice.keyboard.press("Enter")
    expect(alice.locator("#messages li.message")).to_have_count(25)
    expect(alice.locator("#messages li.pending")).to_have_count(0)

    carol = open_tab(width=width, height=700)
    enter_room(carol, "carol", room)
    expect(carol.locator("#roster li")).to_have_count(2)
    expect(carol.locator("#messages li.message")).to_have_count(25)

    def cut_off() -> float:
        return carol.evaluate(
            """() => {
              const log = document.getElementById('messages').getBoundingClientRect();
              const items = document.querySelectorAll('#messages li.message');
              const last = items[items.length - 1].getBoundingClientRect();
              return Math.max(0, last.bottom - log.bottom);
            }"""
        )

    # The roster and the status settle after "ready"; the log must follow them.
    eventually_blocking(lambda: cut_off() <= 1, timeout=5, what=lambda: f"{cut_off()} px cut off")


def test_rooms_are_listed_joined_left_switched_and_shared(open_tab, room: str, system) -> None:
    # Problem 6: the public rooms with their activity, switching without a reload, leaving,
    # and a private room's invite link with a copy button.
    alice = open_tab()
    enter_room(alice, "alice", room)
    send(alice, "anyone here?")

    bob = open_tab()
    choose_name(bob, "bob")
    entry = bob.locator(f'#room-list button[data-room="{room}"]')

    def listed() -> bool:
        bob.click("#rooms-refresh")
        bob.wait_for_function("() => !document.getElementById('rooms-status').textContent.startsWith('Loading')")
        return entry.count() == 1

    eventually_blocking(listed, timeout=15, what="the room in the public list")
    expect(entry).to_contain_text("1 message")
    expect(entry).to_contain_text("active")
    shot(bob, system, "room-list")
    bob.set_viewport_size({"width": PHONE, "height": 700})
    shot(bob, system, "room-list")
    bob.set_viewport_size({"width": DESKTOP, "height": 700})
    entry.click()
    expect_ready(bob)
    expect(bob.locator("#messages li.message .text")).to_have_text(["anyone here?"])
    expect(alice.locator("#messages li.presence")).to_have_text(["bob joined"])
    assert bob.evaluate("() => performance.getEntriesByType('navigation').length") == 1

    # Bob leaves for the room list: Alice sees him go; he switches to a private room.
    bob.click("#leave")
    expect(bob.locator("#step-room")).to_be_visible()
    expect(alice.locator("#messages li.presence")).to_have_text(["bob joined", "bob left"])
    expect(alice.locator("#roster li")).to_have_count(1)
    bob.click("#create-private")
    expect(bob).to_have_url(PRIVATE_HASH)
    expect_ready(bob)
    expect(bob.locator("#messages li")).to_have_count(0)  # nothing of the last room
    expect(bob.locator("#invite-box")).to_be_visible()
    link = bob.locator("#invite-link").input_value()
    assert link == bob.url
    bob.context.grant_permissions(["clipboard-read", "clipboard-write"])
    bob.click("#copy-invite")
    expect(bob.locator("#copy-status")).to_have_text("Link copied.")
    assert bob.evaluate("() => navigator.clipboard.readText()") == link
    shot(bob, system, "private-room")

    # Carol follows the link: she is told it is a private room before she names herself.
    carol = open_tab(PRIVATE_HASH.search(link).group(1))
    expect(carol.locator("#invite-hint")).to_contain_text("private room")
    choose_name(carol, "carol")
    expect_ready(carol)
    expect_roster(carol, ["bob", "carol"])


def test_history_reads_like_a_chat(open_tab, room: str) -> None:
    # Problem 6: date separators, join lines, the asker's own lines, a "new messages" marker.
    alice, bob = open_tab(), open_tab(height=500)
    enter_room(alice, "alice", room)
    enter_room(bob, "bob", room)
    expect(alice.locator("#messages li.presence")).to_have_text(["bob joined"])
    for i in range(20):
        alice.fill("#message-input", f"line {i}")
        alice.keyboard.press("Enter")
    expect(bob.locator("#messages li.message")).to_have_count(20)
    expect(bob.locator("#messages li.day")).to_have_text(["Today"])
    title = bob.locator("#messages li.message .time").first.get_attribute("title") or ""
    assert re.search(r"\d{4}", title), title  # the full date, not just HH:MM

    # Bob scrolls up to read; Alice goes on: he is told there is more below, and where.
    bob.evaluate("() => { document.getElementById('messages').scrollTop = 0; }")
    bob.wait_for_function("() => !durachat.state.stick")
    send(alice, "are you still there?")
    expect(bob.locator("#new-below")).to_be_visible()
    expect(bob.locator("#messages li.unread-marker + li.message .text")).to_have_text("are you still there?")
    bob.click("#new-below")
    expect(bob.locator("#new-below")).to_be_hidden()
    bob.wait_for_function("() => durachat.state.stick")


def test_yesterday_is_not_today(open_tab, room: str) -> None:
    # Problem 6: times were HH:MM only, so yesterday's messages looked like today's.
    alice = open_tab()
    enter_room(alice, "alice", room)
    send(alice, "said today")
    tomorrow = open_tab()
    tomorrow.clock.set_fixed_time(time.time() + 86_400)  # the reader's clock is a day on
    tomorrow.reload()
    enter_room(tomorrow, "dana", room)
    expect(tomorrow.locator("#messages li.day")).to_have_text(["Yesterday"])


def test_keyboard_only_with_lines_a_counter_and_a_bare_ai(open_tab, room: str) -> None:
    # Problem 6: multi-line input (Shift+Enter), a counter instead of a silent cut, "@ai"
    # alone says what to do; all by keyboard, with the focus visible.
    page = open_tab()
    expect(page.locator("#name-input")).to_be_focused()
    page.keyboard.type("kim")
    page.keyboard.press("Enter")
    expect(page.locator("#room-input")).to_be_focused()
    page.keyboard.type(room)
    page.keyboard.press("Enter")
    expect_ready(page)
    expect(page.locator("#message-input")).to_be_focused()
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    page.keyboard.press("Enter")
    expect(page.locator("#messages li.message .text")).to_have_text(["first line\nsecond line"])
    expect(page.locator("#messages li.pending")).to_have_count(0)

    long = "x" * 418
    page.locator("#message-input").fill(long)  # as a paste does: all of it arrives
    expect(page.locator("#message-input")).to_have_value(long)
    expect(page.locator("#counter")).to_have_text("418/256")
    expect(page.locator("#counter")).to_have_class(re.compile(r"\bover\b"))
    page.keyboard.press("Enter")
    expect(page.locator("#compose-error")).to_contain_text("Too long: 418 characters")
    expect(page.locator("#message-input")).to_have_value(long)  # nothing is lost

    page.locator("#message-input").fill("@ai")
    expect(page.locator("#compose-error")).to_have_text("")
    page.keyboard.press("Enter")
    expect(page.locator("#compose-error")).to_contain_text("question after @ai")
    expect(page.locator("#messages li.message")).to_have_count(1)

    # Tab moves on to Send, and the focus ring shows where it is.
    page.keyboard.press("Tab")
    expect(page.locator("#send")).to_be_focused()
    ring = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert ring not in ("none", ""), ring


def test_the_name_is_remembered_and_can_be_changed(open_tab, room: str) -> None:
    # Problem 6: the name remembered across reloads; changing it without leaving the room.
    alice, page = open_tab(), open_tab()
    enter_room(alice, "alice", room)
    enter_room(page, "\u200blee", room)  # the server trims the invisible character
    send(page, "hi")  # echoed as "lee": still recognised as mine, so not left pending
    expect_messages(alice, [("lee", "hi")])
    page.reload()
    expect_ready(page)  # straight back into the room, with the remembered name
    expect(page.locator("#room-title")).to_have_text(f"#{room}")
    expect(page.locator("#whoami")).to_contain_text("lee")
    page.click("#change-name")
    expect(page.locator("#name-input")).to_have_value("lee")
    page.fill("#name-input", "lee2")
    page.keyboard.press("Enter")
    expect_ready(page)
    expect_roster(alice, ["alice", "lee2"])
    send(page, "new name")
    expect_messages(alice, [("lee", "hi"), ("lee2", "new name")])


def test_a_reserved_name_is_refused_on_the_name_step(open_tab) -> None:
    # Problem 2 (the name step half): "AI" was accepted here, then refused by the server.
    page = open_tab()
    choose_name(page, "AI")
    expect(page.locator("#name-error")).to_contain_text("reserved")
    expect(page.locator("#name-input")).to_be_enabled()
    expect(page.locator("#step-room")).to_be_hidden()


def relative_luminance(rgb: tuple[float, float, float]) -> float:
    def channel(c: float) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


# Text colour on background, as the stylesheet uses them.
PAIRS = [
    ("--fg", "--bg"), ("--fg", "--panel"), ("--fg", "--mine"), ("--fg", "--ai"),
    ("--muted", "--bg"), ("--muted", "--panel"), ("--muted", "--mine"), ("--muted", "--ai"),
    ("--accent", "--panel"), ("--accent", "--bg"), ("--accent", "--ai"),
    ("--accent-fg", "--accent"), ("--error", "--panel"), ("--error", "--bg"),
    ("--error", "--mine"), ("--warn-fg", "--warn-bg"), ("--ok", "--panel"),
    ("--pending", "--mine"), ("--pending", "--panel"),
]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_palette_passes_wcag_aa(open_tab, scheme: str, system) -> None:
    page = open_tab(color_scheme=scheme)
    colours = page.evaluate(
        """(names) => {
          const probe = document.createElement('span');
          document.body.append(probe);
          const out = {};
          for (const n of names) {
            probe.style.color = 'var(' + n + ')';
            out[n] = getComputedStyle(probe).color.match(/[\\d.]+/g).slice(0, 3).map(Number);
          }
          probe.remove();
          return out;
        }""",
        sorted({n for pair in PAIRS for n in pair}),
    )
    ratios = {f"{fg} on {bg}": contrast(tuple(colours[fg]), tuple(colours[bg])) for fg, bg in PAIRS}
    failing = {k: round(v, 2) for k, v in ratios.items() if v < 4.5}
    assert not failing, f"{scheme}: below 4.5:1: {failing}"
    assert min(ratios.values()) >= 4.5
    if scheme == "light":
        for width in (PHONE, DESKTOP):
            page.set_viewport_size({"width": width, "height": 700})
            shot(page, system, "name-step")
