"""Attachments: upload ids on the `message` frame and its broadcast (an extension key old
clients ignore), checked by the gateway, kept in the room's history, and passed with an
`@ai` question to the context service, whose offline provider says it received the file."""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from contracts.upload import PIECE_SIZE
from services.gateway.uploads import PROGRESS_EVERY
from services.localsystem import LocalSystem
from tests.conftest import running
from tests.e2e.chat_clients import ChatClient, joined
from tests.support import eventually

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    with running(LocalSystem(tmp_path_factory.mktemp("attachments"))) as local:
        yield local


def upload(system: LocalSystem, room: str, data: bytes, name: str = "pic.png", finish: bool = True) -> str:
    md = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}"
                  for k, v in {"filename": name, "filetype": "image/png", "room": room}.items())
    created = httpx.post(system.base_url + "/api/uploads", headers={
        **TUS, "Upload-Length": str(len(data)), "Upload-Metadata": md})
    assert created.status_code == 201, created.text
    url = created.headers["location"]
    if finish:
        done = httpx.patch(system.base_url + url, content=data, headers={
            **TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"})
        assert done.status_code == 204, done.text
    return url.rsplit("/", 1)[1]


def png(size: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + os.urandom(size - 8)


async def test_a_message_with_an_attachment_reaches_everyone_and_the_ai(system: LocalSystem) -> None:
    room = f"att-{uuid.uuid4().hex[:8]}"
    upload_id = upload(system, room, png(12_345))
    alice, bob = await joined(system, room, "alice", "bob")
    await alice.send({"message": "@ai what is in this picture?", "attachments": [upload_id]})
    seen = await bob.recv_until(lambda f: f.get("name") == "alice", timeout=10)
    assert seen[-1]["attachments"] == [upload_id]
    assert seen[-1]["message"] == "@ai what is in this picture?"
    answer = await bob.recv_until(lambda f: f.get("name") == "AI" and "kind" in f, timeout=30)
    assert "I received the file pic.png (image/png, 12,345 bytes)" in answer[-1]["message"]

    # A message may be only an attachment; a socket joining later sees it in the history.
    await alice.send({"message": "", "attachments": [upload_id]})
    await alice.recv_until(lambda f: f.get("attachments") == [upload_id] and f.get("message") == "")
    carol = await ChatClient.connect(system.ws_url, room)
    history = await carol.join("carol")
    assert [f["attachments"] for f in history if f.get("attachments")] == [[upload_id], [upload_id]]
    for client in (alice, bob, carol):
        await client.close()

    # The query API shows the messages' attachments, joined with the uploads table.
    def page() -> list[dict]:
        got = httpx.get(f"{system.base_url}/api/rooms/{room}/messages", params={"order": "oldest"})
        return [m for m in got.json()["messages"] if m["attachments"]] if got.status_code == 200 else []

    def projected() -> bool:
        rows = page()
        return len(rows) == 2 and all(m["attachments"][0]["state"] == "complete" for m in rows)

    await eventually(projected, timeout=20, what=lambda: f"attachments projected: {page()}")
    first = page()[0]
    assert first["text"] == "@ai what is in this picture?"
    assert first["attachments"] == [{"id": upload_id, "name": "pic.png", "type": "image/png",
                                     "size": 12_345, "state": "complete", "gemini_state": None}]


async def test_attachments_the_gateway_refuses(system: LocalSystem) -> None:
    room = f"att-{uuid.uuid4().hex[:8]}"
    elsewhere = upload(system, "another-room", png(100))
    unfinished = upload(system, room, png(100), finish=False)
    (alice,) = await joined(system, room, "alice")
    for frame, why in [
        ({"message": "x", "attachments": [elsewhere]}, "not uploaded to this room"),
        ({"message": "x", "attachments": [unfinished]}, "not finished"),
        ({"message": "x", "attachments": ["0" * 64]}, "No upload"),
        ({"message": "x", "attachments": ["nope"]}, "Not an upload id"),
        ({"message": "x", "attachments": "nope"}, "list of upload ids"),
        ({"message": "", "attachments": []}, "empty"),
    ]:
        await alice.send(frame)
        error = await alice.recv_until(lambda f: "error" in f)
        assert why in error[-1]["error"], (frame, error[-1])
    await alice.close()


async def test_the_room_sees_an_uploads_progress_at_a_bounded_rate(system: LocalSystem) -> None:
    """Sockets in the upload's room get `{"upload": {...}}` frames (no name, message or
    timestamp: the demo's client ignores them) as its bytes are stored: not one per piece,
    at most one per PROGRESS_EVERY, the last one when every byte is stored."""
    room = f"att-{uuid.uuid4().hex[:8]}"
    (alice,) = await joined(system, room, "alice")
    (other,) = await joined(system, f"att-{uuid.uuid4().hex[:8]}", "olga")
    data = png(7 * PIECE_SIZE + 5)
    upload_id = upload(system, room, data, name="big.png", finish=False)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        for offset in range(0, len(data), 3 * PIECE_SIZE):  # three PATCHes
            part = data[offset : offset + 3 * PIECE_SIZE]
            done = await client.patch(f"/api/uploads/{upload_id}", content=part, headers={
                **TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset)})
            assert done.status_code == 204, done.text
    frames = await alice.recv_until(lambda f: f.get("upload", {}).get("status") == "stored", timeout=20)
    elapsed = time.monotonic() - started
    progress = [f for f in frames if "upload" in f]
    assert progress and all(set(f) == {"upload"} for f in progress), progress
    events = [f["upload"] for f in progress]
    assert all(e["id"] == upload_id and e["name"] == "big.png" and e["type"] == "image/png"
               and e["total"] == len(data) for e in events), events
    received = [e["received"] for e in events]
    assert received == sorted(received) and received[-1] == len(data), received
    assert len(events) < 8, f"one frame per piece: {received}"  # 8 pieces
    assert len(events) <= 2 + elapsed / PROGRESS_EVERY, (len(events), elapsed)
    assert [e["status"] for e in events][:-1] == ["receiving"] * (len(events) - 1)
    # A socket of another room hears nothing of it.
    with pytest.raises(TimeoutError):
        await other.recv_until(lambda f: "upload" in f, timeout=0.5)
    await alice.close()
    await other.close()
