"""The hand-off of a finished upload to the Gemini Files API (the fake), by the upload
service hosted in-process: exactly once, resumed after each scripted failure, polled to
ACTIVE by the object's alarm, re-made when Gemini lost its copy."""

from __future__ import annotations

import hashlib
import os
import secrets

import pytest
from prometheus_client import REGISTRY

from contracts.upload import (
    PIECE_SIZE,
    CreateUpload,
    GetUpload,
    NeedGeminiCopy,
    RecordRange,
    UploadClient,
    UploadView,
)
from services.upload.gemini import gemini_file_id
from services.upload.main import SERVICE as UPLOAD_SERVICE
from services.upload.store import UploadBucket
from tests.conftest import hosted
from tests.fakes.gemini import ChunkCut, ChunkFail, FakeGemini
from tests.support import eventually

CHUNK = 8 * 1024 * 1024


@pytest.fixture
async def service(nats_server, gemini: FakeGemini):
    settings = {"gemini_api_key": "test-key", "gemini_base_url": gemini.base_url}
    async with hosted(nats_server, UPLOAD_SERVICE, **settings) as running:
        yield running


async def stored_upload(nc, data: bytes, mime: str = "application/pdf") -> str:
    """An upload whose bytes are stored and recorded, as the gateway leaves one."""
    upload_id = secrets.token_hex(32)
    client = UploadClient(nc, timeout=10)
    created = await client.send(upload_id, CreateUpload(length=len(data), mime=mime, name="r.pdf", room="r"))
    assert isinstance(created, UploadView), created
    bucket = UploadBucket(nc)
    seq = first = offset = 0
    for start in range(0, len(data), PIECE_SIZE):
        piece = data[start : start + PIECE_SIZE]
        seq = await bucket.put_piece(upload_id, offset, piece, 0)
        first = first or seq
        offset += len(piece)
    if data:
        recorded = await client.send(upload_id, RecordRange(
            offset=0, length=len(data), first_seq=first, last_seq=seq, sha256=hashlib.sha256(data).hexdigest()))
        assert isinstance(recorded, UploadView), recorded
    return upload_id


async def view_of(nc, upload_id: str) -> UploadView:
    view = await UploadClient(nc, timeout=10).send(upload_id, GetUpload())
    assert isinstance(view, UploadView), view
    return view


async def active(nc, upload_id: str, timeout: float = 20) -> UploadView:
    async def state():
        view = await view_of(nc, upload_id)
        return view if view.gemini_state in ("ACTIVE", "FAILED") else None

    return await eventually(state, timeout=timeout, what=lambda: f"upload {upload_id[:8]} handed off")


def pdf(size: int) -> bytes:
    return b"%PDF-1.7\n" + os.urandom(size - 9)


async def test_a_finished_upload_is_handed_off_once_and_polled_to_active(service, nc, gemini: FakeGemini) -> None:
    data = pdf(CHUNK + 3 * PIECE_SIZE)  # two Gemini chunks
    upload_id = await stored_upload(nc, data)
    view = await active(nc, upload_id)
    file_id = gemini_file_id(upload_id, 0)
    assert view.gemini_state == "ACTIVE", view.gemini_reason
    assert view.gemini_file == file_id and view.gemini_uri == f"{gemini.base_url}/v1beta/files/{file_id}"
    made = gemini.files.file(file_id)
    assert made is not None and made.sha256 == hashlib.sha256(data).digest()
    assert made.display_name == "r.pdf" and made.mime_type == "application/pdf"
    starts = [r for r in gemini.files.uploads_started() if file_id in str(r.json)]
    assert len(starts) == 1
    # Asked again while ACTIVE: nothing is uploaded again.
    again = await UploadClient(nc, timeout=10).send(upload_id, NeedGeminiCopy())
    assert isinstance(again, UploadView) and again.gemini_state == "ACTIVE"
    assert len([r for r in gemini.files.uploads_started() if file_id in str(r.json)]) == 1


@pytest.mark.parametrize(
    "steps",
    [[ChunkFail(503)], [ChunkFail(429, header=True), ChunkFail(500)], [ChunkCut(stored=True)],
     [ChunkCut(stored=False)]],
    ids=["503 without status", "429 then 500", "cut after storing", "cut before storing"],
)
async def test_scripted_failures_are_resumed_from_what_gemini_holds(service, nc, gemini: FakeGemini, steps) -> None:
    gemini.files.script_chunks(*steps)
    data = pdf(CHUNK + 1000)
    upload_id = await stored_upload(nc, data)
    view = await active(nc, upload_id, timeout=30)
    assert view.gemini_state == "ACTIVE", view.gemini_reason
    made = gemini.files.file(gemini_file_id(upload_id, 0))
    assert made is not None and made.sha256 == hashlib.sha256(data).digest()
    starts = [r for r in gemini.files.uploads_started() if gemini_file_id(upload_id, 0) in str(r.json)]
    assert len(starts) == 1  # one session, resumed; never a second upload


async def test_a_refused_chunk_or_failed_processing_is_recorded(service, nc, gemini: FakeGemini) -> None:
    gemini.files.script_chunks(ChunkFail(400, header=True))
    refused = await active(nc, await stored_upload(nc, pdf(2000)))
    assert refused.gemini_state == "FAILED" and "400" in (refused.gemini_reason or "")

    upload_id = secrets.token_hex(32)
    gemini.files.failing.add(f"files/{gemini_file_id(upload_id, 0)}")
    failed = await active(nc, await _with_id(nc, upload_id, pdf(3000)))
    assert failed.gemini_state == "FAILED"


async def _with_id(nc, upload_id: str, data: bytes) -> str:
    client = UploadClient(nc, timeout=10)
    await client.send(upload_id, CreateUpload(length=len(data), mime="application/pdf", name="f.pdf", room="r"))
    seq = await UploadBucket(nc).put_piece(upload_id, 0, data, 0)
    await client.send(upload_id, RecordRange(offset=0, length=len(data), first_seq=seq, last_seq=seq,
                                             sha256=hashlib.sha256(data).hexdigest()))
    return upload_id


async def test_a_lost_copy_is_made_again_from_our_store(service, nc, gemini: FakeGemini) -> None:
    data = pdf(5000)
    upload_id = await stored_upload(nc, data)
    first = await active(nc, upload_id)
    gemini.files.expire(first.gemini_file or "")  # 48 h later: Gemini answers 403
    lost = await UploadClient(nc, timeout=10).send(upload_id, NeedGeminiCopy(lost=True))
    assert isinstance(lost, UploadView) and lost.gemini_generation == 1

    async def second():
        view = await view_of(nc, upload_id)
        return view if view.gemini_state == "ACTIVE" and view.gemini_generation == 1 else None

    again = await eventually(second, timeout=20)
    assert again.gemini_file == gemini_file_id(upload_id, 1) != first.gemini_file
    made = gemini.files.file(gemini_file_id(upload_id, 1))
    assert made is not None and made.sha256 == hashlib.sha256(data).digest()


async def test_a_hand_off_cut_by_a_crash_resumes_its_session(nats_server, nc, gemini: FakeGemini) -> None:
    """The service died after sending one chunk: the next owner queries the recorded
    session and sends only the rest (one session, no second upload)."""
    from contracts.upload import HandOffBegin, HandOffProgress
    from services.upload.gemini import GeminiFiles

    data = pdf(CHUNK + 2000)
    async with hosted(nats_server, UPLOAD_SERVICE):  # no API key: no hand-off yet
        upload_id = await stored_upload(nc, data)
        await eventually(lambda: _complete(nc, upload_id))
        # What the dead run had done: a session opened and recorded, one chunk sent.
        files = GeminiFiles("test-key", gemini.base_url)
        file_id = gemini_file_id(upload_id, 0)
        url = await files.start(file_id, "r.pdf", "application/pdf", len(data))
        await files.upload(url, 0, data[:CHUNK], final=False)
        await files.aclose()
        client = UploadClient(nc, timeout=10)
        assert isinstance(await client.send(upload_id, HandOffBegin(file_id=file_id, upload_url=url)), UploadView)
        assert isinstance(await client.send(upload_id, HandOffProgress(received=CHUNK)), UploadView)
    settings = {"gemini_api_key": "test-key", "gemini_base_url": gemini.base_url}
    sent_before = len(gemini.requests)
    async with hosted(nats_server, UPLOAD_SERVICE, **settings):
        view = await active(nc, upload_id)  # loading the upload resumes its hand-off
    assert view.gemini_state == "ACTIVE", view.gemini_reason
    made = gemini.files.file(file_id)
    assert made is not None and made.sha256 == hashlib.sha256(data).digest()
    later = gemini.requests[sent_before:]
    assert [r.headers.get("x-goog-upload-command") for r in later if r.query.get("upload_id")] == [
        "query", "upload, finalize"]
    assert len([r for r in gemini.files.uploads_started() if file_id in str(r.json)]) == 1


async def _complete(nc, upload_id: str) -> bool:
    return (await view_of(nc, upload_id)).status == "complete"


async def test_hand_off_metrics_count_outcomes_and_time_to_active(service, nc, gemini: FakeGemini) -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    active_before = value("durachat_upload_handoffs_total", outcome="active")
    failed_before = value("durachat_upload_handoffs_total", outcome="failed")
    timed_before = value("durachat_upload_seconds_to_active_count")
    upload_id = await stored_upload(nc, pdf(3 * PIECE_SIZE))
    assert (await active(nc, upload_id)).gemini_state == "ACTIVE"
    await eventually(lambda: value("durachat_upload_handoffs_total", outcome="active") == active_before + 1,
                     what="the hand-off counted as active")
    assert value("durachat_upload_seconds_to_active_count") == timed_before + 1
    assert value("durachat_upload_seconds_to_active_sum") > 0
    assert value("durachat_upload_handoffs_total", outcome="failed") == failed_before
