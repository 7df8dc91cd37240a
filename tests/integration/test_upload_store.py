"""The pieces of an upload in the object store bucket (a real nats-server): one chain,
a retried piece stored once, a stale writer refused, and the finished file an ordinary
object that nats-py's own object store reads and verifies."""

from __future__ import annotations

import hashlib
import os
import secrets

import pytest

from services.upload.store import StaleWriter, UploadBucket


async def test_the_chain_refuses_a_stale_writer_and_stores_a_retry_once(nc) -> None:
    bucket = UploadBucket(nc)
    await bucket.ensure()
    upload_id = secrets.token_hex(32)
    first = await bucket.put_piece(upload_id, 0, b"a" * 10, 0, "w1")
    again = await bucket.put_piece(upload_id, 0, b"a" * 10, 0, "w1")  # the same publish retried
    assert again == first
    second = await bucket.put_piece(upload_id, 10, b"b" * 5, first, "w1")
    with pytest.raises(StaleWriter):
        await bucket.put_piece(upload_id, 10, b"c" * 5, first, "w2")  # wrote from a stale view
    pieces = [p async for p in bucket.pieces(upload_id)]
    assert [(p.seq, p.offset, p.data) for p in pieces] == [(first, 0, b"a" * 10), (second, 10, b"b" * 5)]
    last = await bucket.last_piece(upload_id)
    assert last is not None and (last.seq, last.end) == (second, 15)


async def test_a_finished_upload_is_an_ordinary_object(nc) -> None:
    bucket = UploadBucket(nc)
    await bucket.ensure()
    upload_id = secrets.token_hex(32)
    data = os.urandom(2_500_000)
    seq = 0
    starts = range(0, len(data), 1_000_000)
    for start in starts:
        seq = await bucket.put_piece(upload_id, start, data[start : start + 1_000_000], seq, "w")
    await bucket.publish_meta(upload_id, len(data), len(starts), hashlib.sha256(data).digest(),
                              {"Content-Type": "application/pdf"})
    store = await nc.jetstream().object_store("uploads")
    got = await store.get(upload_id)  # nats-py checks the digest
    assert got.data == data and got.info.size == len(data)
    await bucket.purge(upload_id, with_meta=True)
    assert [p async for p in bucket.pieces(upload_id)] == []
