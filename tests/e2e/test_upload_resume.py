"""An upload resumes where it stopped: after the client goes away mid-piece, after kill -9 of
the gateway and of the upload service mid-upload; nothing is lost, nothing stored twice, and
the final sha256 is right. And the per-user daily upload byte quota."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import nats
import pytest

from contracts.upload import PIECE_SIZE, chunk_subject, object_stream
from services.gateway.identity import PLACEHOLDER_SECRET, mint
from services.localsystem import LocalSystem, ServiceProcess
from tests.conftest import running
from tests.support import eventually_blocking

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {"Content-Type": "application/offset+octet-stream"}
DAILY_BYTES = 100 << 20


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    env = {"DURACHAT_QUOTA_DAILY_UPLOAD_BYTES": str(DAILY_BYTES)}
    with running(LocalSystem(tmp_path_factory.mktemp("resume"), extra_env=env)) as local:
        yield local


def png(size: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + os.urandom(size - 8)


def new_upload(system: LocalSystem, length: int, headers: dict | None = None) -> str:
    md = "filename " + base64.b64encode(b"p.png").decode() + ",filetype " + base64.b64encode(b"image/png").decode()
    response = httpx.post(system.base_url + "/api/uploads", headers={
        **TUS, "Upload-Length": str(length), "Upload-Metadata": md, **(headers or {})})
    assert response.status_code == 201, response.text
    return response.headers["location"]


def head_offset(system: LocalSystem, url: str) -> int:
    response = httpx.head(system.base_url + url, headers=TUS, timeout=30)
    assert response.status_code == 200, response.status_code
    return int(response.headers["upload-offset"])


def finish(system: LocalSystem, url: str, data: bytes) -> None:
    offset = head_offset(system, url)
    response = httpx.patch(system.base_url + url, content=data[offset:], timeout=60,
                           headers={**TUS, **STREAM, "Upload-Offset": str(offset)})
    assert response.status_code == 204, response.text
    assert response.headers["upload-offset"] == str(len(data))


class RawPatch:
    """A PATCH whose body is sent by hand, so a test can stop in the middle of it."""

    def __init__(self, system: LocalSystem, url: str, offset: int, length: int) -> None:
        parts = urlsplit(system.base_url)
        self.sock = socket.create_connection((parts.hostname, parts.port))
        head = (f"PATCH {url} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
                f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
                f"Content-Length: {length}\r\n\r\n")
        self.sock.sendall(head.encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def status(self) -> int:
        self.sock.settimeout(60)
        return int(self.sock.recv(4096).split(b" ", 2)[1])

    def close(self) -> None:
        self.sock.close()


async def chain(nats_url: str, upload_id: str) -> list[tuple[int, int]]:
    """(offset, size) of every stored piece of the upload, in order."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(object_stream(), subjects_filter=chunk_subject(upload_id))
        if not (info.state.subjects or {}).get(chunk_subject(upload_id)):
            return []
        sub = await js.subscribe(chunk_subject(upload_id), ordered_consumer=True)
        pieces = []
        while True:
            msg = await sub.next_msg(timeout=5)
            pieces.append((int(msg.headers["Upload-Offset"]), len(msg.data)))
            if msg.metadata.num_pending == 0:
                break
        await sub.unsubscribe()
        return pieces
    finally:
        await nc.close()


def stored(system: LocalSystem, url: str) -> list[tuple[int, int]]:
    assert system.nats is not None
    return asyncio.run(chain(system.nats.url, url.rsplit("/", 1)[1]))


def check_whole(system: LocalSystem, url: str, data: bytes) -> None:
    """The file reads back whole, its pieces are one chain with no byte twice, and the
    sha256 recorded when it was finished is the file's."""
    got = httpx.get(system.base_url + url, timeout=60)
    assert got.status_code == 200 and got.content == data
    pieces = stored(system, url)
    position = 0
    for offset, size in pieces:
        assert offset == position, pieces
        position += size
    assert position == len(data)
    sha = hashlib.sha256(data).hexdigest()
    eventually_blocking(lambda: httpx.get(system.base_url + url, headers={"Range": "bytes=0-0"}).headers.get("etag") == f'"{sha}"',
                        what="the upload finished with the file's sha256")


def test_resume_after_the_client_goes_away_mid_piece(system: LocalSystem) -> None:
    data = png(5 * PIECE_SIZE)
    url = new_upload(system, len(data))
    sent = 2 * PIECE_SIZE + 300_000  # two whole pieces and part of a third
    raw = RawPatch(system, url, 0, len(data))
    raw.send(data[:sent])
    eventually_blocking(lambda: sum(size for _, size in stored(system, url)) >= 2 * PIECE_SIZE)
    raw.close()
    # What arrived is kept, the part of a piece too: the server stores as much as it received.
    eventually_blocking(lambda: head_offset(system, url) == sent, what=f"offset {sent} after the cut")
    finish(system, url, data)
    check_whole(system, url, data)


def test_resume_after_kill_9_of_the_gateway(system: LocalSystem) -> None:
    data = png(6 * PIECE_SIZE + 5)
    url = new_upload(system, len(data))
    raw = RawPatch(system, url, 0, len(data))
    raw.send(data[: 3 * PIECE_SIZE + 1000])
    eventually_blocking(lambda: sum(size for _, size in stored(system, url)) >= 2 * PIECE_SIZE)
    assert system.gateway is not None
    system.gateway.kill()  # SIGKILL: the pieces it stored were never reported to the upload
    raw.close()
    system.gateway = ServiceProcess("services.gateway", system.env(), system.data_dir / "gateway-2.log").start()
    system.wait_healthy(30)
    # The new gateway finds the stored pieces in the chain; the bytes of the unfinished
    # piece died with the old one (they were never acknowledged).
    assert head_offset(system, url) == sum(size for _, size in stored(system, url)) >= 2 * PIECE_SIZE
    finish(system, url, data)
    check_whole(system, url, data)


def test_resume_after_kill_9_of_the_upload_service(system: LocalSystem) -> None:
    data = png(4 * PIECE_SIZE + 77)
    url = new_upload(system, len(data))
    raw = RawPatch(system, url, 0, len(data))
    half = 2 * PIECE_SIZE
    raw.send(data[:half])
    eventually_blocking(lambda: len(stored(system, url)) >= 2)
    assert system.upload is not None
    system.upload.kill()
    raw.send(data[half:])  # the gateway keeps storing pieces; recording them waits for an owner
    system.upload = system.start_upload()
    status = raw.status()
    raw.close()
    # Either the PATCH's report reached the new owner in time (204), or the next HEAD
    # records what the chain holds: nothing is lost either way.
    assert status in (204, 503)
    assert head_offset(system, url) == len(data)
    check_whole(system, url, data)


def test_daily_upload_byte_quota(system: LocalSystem) -> None:
    carol = {"Authorization": "Bearer " + mint("carol", PLACEHOLDER_SECRET)}
    new_upload(system, 60 << 20, carol)  # declared bytes count at creation
    md = "filetype " + base64.b64encode(b"image/png").decode()
    refused = httpx.post(system.base_url + "/api/uploads", headers={
        **TUS, **carol, "Upload-Length": str(50 << 20), "Upload-Metadata": md})
    assert refused.status_code == 413
    assert "Daily upload quota reached" in refused.text
    new_upload(system, 40 << 20, carol)  # what is left today still goes
    dave = {"Authorization": "Bearer " + mint("dave", PLACEHOLDER_SECRET)}
    new_upload(system, 50 << 20, dave)  # another user's day is their own


def test_a_stale_patch_is_refused_not_blocking(system: LocalSystem) -> None:
    """A PATCH still open on a connection the client gave up on (a slow proxy, say) does
    not lock the upload: HEAD answers at once, the resumed PATCH goes through, and the stale
    one is refused (409) at its next piece, its bytes never interleaved with the new ones."""
    data = png(5 * PIECE_SIZE)
    url = new_upload(system, len(data))
    stale = RawPatch(system, url, 0, len(data))
    stale.send(data[: 2 * PIECE_SIZE])
    eventually_blocking(lambda: len(stored(system, url)) >= 2)
    offset = head_offset(system, url)  # no wait for the open PATCH
    assert offset == sum(size for _, size in stored(system, url)) > 0  # what is stored, no more
    finish(system, url, data)  # the resumed upload, while the stale PATCH is still open
    stale.send(data[2 * PIECE_SIZE : 3 * PIECE_SIZE])  # the stale writer wakes up
    assert stale.status() == 409
    stale.close()
    check_whole(system, url, data)


def test_two_concurrent_patches_the_fenced_one_cannot_corrupt_the_file(system: LocalSystem) -> None:
    """Two PATCHes open at once: the stale one (its client gave up on it) stored two pieces;
    the resumed one claims the upload and is mid-body when the stale one wakes up and sends
    other bytes. Those are refused (409) and are nowhere in the file; the finished object
    reads whole through the gateway and through nats-py's object store."""
    data = png(6 * PIECE_SIZE)
    url = new_upload(system, len(data))
    stale = RawPatch(system, url, 0, len(data))
    stale.send(data[: 2 * PIECE_SIZE])
    eventually_blocking(lambda: len(stored(system, url)) >= 2)
    offset = head_offset(system, url)
    assert offset == sum(size for _, size in stored(system, url)) > 0
    fresh = RawPatch(system, url, offset, len(data) - offset)
    fresh.send(data[offset : offset + PIECE_SIZE + 1000])  # it has claimed and stored a piece
    eventually_blocking(lambda: len(stored(system, url)) >= 3)
    stale.send(os.urandom(2 * PIECE_SIZE))  # not the file's bytes
    assert stale.status() == 409
    stale.close()
    fresh.send(data[offset + PIECE_SIZE + 1000 :])
    assert fresh.status() == 204
    fresh.close()
    sha = hashlib.sha256(data).hexdigest()
    eventually_blocking(lambda: httpx.get(system.base_url + url, headers={"Range": "bytes=0-0"}).headers.get("etag") == f'"{sha}"',
                        what="the upload finished with the file's sha256")
    check_whole(system, url, data)
    assert system.nats is not None
    assert asyncio.run(object_bytes(system.nats.url, url.rsplit("/", 1)[1])) == data


async def object_bytes(nats_url: str, upload_id: str) -> bytes:
    nc = await nats.connect(nats_url)
    try:
        store = await nc.jetstream().object_store("uploads")
        return (await store.get(upload_id)).data  # nats-py checks the digest
    finally:
        await nc.close()
