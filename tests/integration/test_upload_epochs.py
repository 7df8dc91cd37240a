"""Finishing an upload whose subject holds a fenced writer's pieces (stored before it was
fenced, never accepted), with the upload service hosted in-process: only the accepted pieces
of each range's epoch are the file, the others are deleted, and the finished object is one
that nats-py's object store reads and verifies."""

from __future__ import annotations

import hashlib
import os
import secrets

import pytest

from contracts.upload import CreateUpload, GetUpload, RecordRange, UploadClient, UploadView
from services.upload.main import SERVICE as UPLOAD_SERVICE
from services.upload.store import StaleWriter, UploadBucket
from tests.conftest import hosted
from tests.support import eventually

PIECE = 100_000


@pytest.fixture
async def service(nats_server):
    async with hosted(nats_server, UPLOAD_SERVICE) as running:
        yield running


async def test_a_fenced_writers_pieces_are_not_the_file(service, nc) -> None:
    data = b"%PDF-1.7\n" + os.urandom(4 * PIECE - 9)
    junk = os.urandom(PIECE)
    upload_id = secrets.token_hex(32)
    client = UploadClient(nc, timeout=10)
    created = await client.send(upload_id, CreateUpload(length=len(data), mime="application/pdf", name="f.pdf"))
    assert isinstance(created, UploadView), created
    bucket = UploadBucket(nc)
    stale = await bucket.claim(upload_id)
    a = await bucket.put_piece(upload_id, 0, data[:PIECE], stale)
    b = await bucket.put_piece(upload_id, PIECE, data[PIECE : 2 * PIECE], stale)
    recorded = await client.send(upload_id, RecordRange(
        offset=0, length=2 * PIECE, first_seq=a, last_seq=b, epoch=stale,
        sha256=hashlib.sha256(data[: 2 * PIECE]).hexdigest()))
    assert isinstance(recorded, UploadView) and recorded.offset == 2 * PIECE
    # The stale writer stores a piece that is never accepted (its request died unreported,
    # or it lost the race to record); then a newer request claims the upload.
    await bucket.put_piece(upload_id, 2 * PIECE, junk, stale)
    fresh = await bucket.claim(upload_id)
    c = await bucket.put_piece(upload_id, 2 * PIECE, data[2 * PIECE : 3 * PIECE], fresh)
    with pytest.raises(StaleWriter):
        await bucket.put_piece(upload_id, 3 * PIECE, junk, stale)  # it wakes up: refused
    d = await bucket.put_piece(upload_id, 3 * PIECE, data[3 * PIECE :], fresh)
    recorded = await client.send(upload_id, RecordRange(
        offset=2 * PIECE, length=2 * PIECE, first_seq=c, last_seq=d, epoch=fresh,
        sha256=hashlib.sha256(data[2 * PIECE :]).hexdigest()))
    assert isinstance(recorded, UploadView) and recorded.status in ("stored", "complete"), recorded
    late = await client.send(upload_id, RecordRange(  # the stale writer reports its junk late
        offset=2 * PIECE, length=PIECE, first_seq=c - 2, last_seq=c - 2, epoch=stale,
        sha256=hashlib.sha256(junk).hexdigest()))
    assert isinstance(late, UploadView) and len(late.ranges) == 2  # changes nothing

    async def completed():
        view = await client.send(upload_id, GetUpload())
        return isinstance(view, UploadView) and view.status == "complete" and view

    view = await eventually(completed, what="the upload finished")
    assert view.sha256 == hashlib.sha256(data).hexdigest()
    assert [p.seq async for p in bucket.pieces(upload_id)] == [a, b, c, d]  # the junk is gone
    store = await nc.jetstream().object_store("uploads")
    got = await store.get(upload_id)  # nats-py reads the chunk subject and checks the digest
    assert got.data == data
