"""The web client's uploads in headless Chromium against the whole system: attach, progress
with speed and time left, a reload mid-upload that resumes from the last stored byte (not
from zero), the image preview for everyone in the room, pause and cancel, drop and paste."""

from __future__ import annotations

import base64
import re
import struct
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.localsystem import LocalSystem
from tests.conftest import running

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium package is missing (/usr/bin/chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, Route, expect, sync_playwright  # noqa: E402

from tests.e2e.test_browser import CHROMIUM_ARGS, choose_name, expect_ready, join_public_room  # noqa: E402

expect.set_options(timeout=20_000)
MIB = 1024 * 1024


def png(width: int, height: int, seed: int = 1) -> bytes:
    """A real (decodable) RGB PNG of noise: it does not compress, so it is ~3 bytes a pixel."""
    import random

    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 0)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    with running(LocalSystem(tmp_path_factory.mktemp("browser-uploads"))) as local:
        yield local


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_room(chromium: Browser, system: LocalSystem, name: str, room: str, context=None) -> Page:
    context = context or chromium.new_context(viewport={"width": 1000, "height": 700})
    page = context.new_page()
    page.goto(system.base_url + "/")
    choose_name(page, name)
    join_public_room(page, room)
    expect_ready(page)
    return page


def test_attach_progress_reload_resume_and_preview(chromium: Browser, system: LocalSystem, tmp_path: Path) -> None:
    room = f"up-{uuid.uuid4().hex[:12]}"
    picture = tmp_path / "noise.png"
    data = png(700, 600)  # ~1.2 MiB: two PATCHes of 1 MiB
    picture.write_bytes(data)
    context = chromium.new_context(viewport={"width": 1000, "height": 700})
    alice = open_room(chromium, system, "alice", room, context)
    bob = open_room(chromium, system, "bob", room)

    # The first chunk goes through; the next ones are cut off, as by a dying connection.
    patches: list[str] = []
    urls: set[str] = set()

    def network(route: Route) -> None:
        if route.request.method == "PATCH":
            patches.append(route.request.headers["upload-offset"])
            urls.add(route.request.url)
            if len(patches) > 1:
                route.abort()
                return
        route.continue_()

    alice.route("**/api/uploads/*", network)
    alice.set_input_files("#file-input", str(picture))
    info = alice.locator('[data-testid="upload-info"]')
    expect(info).to_have_text(re.compile(r"^\d+% · [\d.]+ [KMG]?B/s · .+ left$"))
    expect(alice.locator(".upload progress")).to_have_attribute("value", str(MIB))
    # The tab is closed mid-upload and opened again: the upload resumes from the server's offset.
    alice.close()
    # Where the server's bytes end: the 1 MiB of the first PATCH, or a little more when a cut
    # PATCH got some of its body through before it died (once in a CI run: 64 KiB more),
    # which the server keeps, as tus means it to.
    (url,) = urls
    cookies = {c["name"]: c["value"] for c in context.cookies()}  # alice's: the upload is hers
    head = httpx.head(url, headers={"Tus-Resumable": "1.0.0"}, cookies=cookies)
    assert head.status_code == 200, (head.status_code, head.text)
    stored = int(head.headers["upload-offset"])
    assert MIB <= stored < len(data), stored
    patches.clear()
    alice = context.new_page()
    sent: list[str] = []
    alice.on("request", lambda r: sent.append(r.headers.get("upload-offset", "")) if r.method == "PATCH" else None)
    alice.goto(system.base_url + "/#" + room)
    expect_ready(alice)  # the name is remembered: straight back into the room
    expect(alice.locator('[data-testid="upload-info"]')).to_have_text(re.compile("ready to send"))
    assert sent and sent[0] == str(stored), (sent, stored)  # from the last stored byte, not from zero

    alice.click("#send")  # a message of just the file
    for page in (alice, bob):
        preview = page.locator('#messages [data-testid="preview"]')
        expect(preview).to_have_count(1)
        expect(page.locator("#messages .attachment-label")).to_have_text(re.compile(r"noise\.png · image/png · 1\.\d MB"))
        page.wait_for_function("el => el.complete && el.naturalWidth === 700", arg=preview.element_handle())
    expect(alice.locator('[data-testid="upload"]')).to_have_count(0)
    context.close()
    bob.context.close()


def test_pause_cancel_drop_and_paste(chromium: Browser, system: LocalSystem) -> None:
    room = f"up-{uuid.uuid4().hex[:12]}"
    page = open_room(chromium, system, "carol", room)
    big = base64.b64encode(png(1400, 1000, seed=2)).decode()  # ~4 MiB
    small = base64.b64encode(png(20, 10, seed=3)).decode()
    give = """([b64, name, how]) => {
        const bin = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bin], name, { type: "image/png" }));
        const target = how === "drop" ? document.getElementById("step-chat") : document.getElementById("message-input");
        const event = how === "drop"
            ? new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true })
            : new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true });
        target.dispatchEvent(event);
    }"""
    # A dropped file: paused, then resumed to the end.
    page.evaluate(give, [big, "dropped.png", "drop"])
    item = page.locator('[data-testid="upload"]').first
    expect(item).to_be_visible()
    item.locator('[data-testid="upload-pause"]').click()
    expect(item).to_have_attribute("data-state", "paused")
    expect(item.locator('[data-testid="upload-info"]')).to_have_text(re.compile(r"\d+% · paused"))
    item.locator('[data-testid="upload-pause"]').click()
    expect(item.locator('[data-testid="upload-info"]')).to_have_text(re.compile("ready to send"))
    # A pasted image: cancelled, so it leaves the tray and is not sent.
    page.evaluate(give, [small, "pasted.png", "paste"])
    expect(page.locator('[data-testid="upload"]')).to_have_count(2)
    page.locator('[data-testid="upload"]').nth(1).locator('[data-testid="upload-cancel"]').click()
    expect(page.locator('[data-testid="upload"]')).to_have_count(1)
    page.fill("#message-input", "two pictures? no, one")
    page.click("#send")
    expect(page.locator('#messages [data-testid="preview"]')).to_have_count(1)
    expect(page.locator("#messages .attachment-label")).to_have_text(re.compile(r"dropped\.png · image/png"))
    page.context.close()


def test_the_room_sees_another_members_upload_on_its_way(chromium: Browser, system: LocalSystem) -> None:
    import httpx

    room = f"up-{uuid.uuid4().hex[:12]}"
    bob = open_room(chromium, system, "bob", room)
    data = png(900, 900)  # ~2.3 MiB
    meta = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}"
                    for k, v in {"filename": "carols.png", "filetype": "image/png", "room": room}.items())
    tus = {"Tus-Resumable": "1.0.0"}
    with httpx.Client(base_url=system.base_url, timeout=30) as client:  # carol, from another client
        created = client.post("/api/uploads", headers={**tus, "Upload-Length": str(len(data)), "Upload-Metadata": meta})
        assert created.status_code == 201, created.text
        url = created.headers["location"]
        first = MIB + 1000
        done = client.patch(url, content=data[:first], headers={
            **tus, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"})
        assert done.status_code == 204, done.text
        item = bob.get_by_test_id("room-upload")
        expect(item).to_contain_text("carols.png")
        expect(item).to_contain_text(re.compile(r"\d+% of 2\.\d MB · someone is uploading"))
        done = client.patch(url, content=data[first:], headers={
            **tus, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(first)})
        assert done.status_code == 204, done.text
    expect(item).to_have_attribute("data-state", "stored")
    expect(item).to_contain_text("uploaded")
    expect(bob.get_by_test_id("room-upload")).to_have_count(0, timeout=10_000)  # gone after a while
    bob.context.close()
