"""The pieces of an upload in the object store bucket (a real nats-server): fenced by write
epoch (a newer claim refuses every earlier writer's next piece), pipelined with a window of
acks in flight, a retried piece stored once, and the finished file an ordinary object that
nats-py's own object store reads and verifies."""

from __future__ import annotations

import hashlib
import os
import secrets

import pytest

from services.upload.store import PieceWriter, StaleWriter, Stored, UploadBucket, vectored


async def test_a_newer_claim_fences_a_writer_and_a_retry_is_stored_once(nc) -> None:
    bucket = UploadBucket(nc)
    await bucket.ensure()
    upload_id = secrets.token_hex(32)
    first_epoch = await bucket.claim(upload_id)
    first = await bucket.put_piece(upload_id, 0, b"a" * 10, first_epoch)
    again = await bucket.put_piece(upload_id, 0, b"a" * 10, first_epoch)  # the same publish retried
    assert again == first
    second_epoch = await bucket.claim(upload_id)
    assert second_epoch > first_epoch
    with pytest.raises(StaleWriter):
        await bucket.put_piece(upload_id, 10, b"c" * 5, first_epoch)  # the fenced writer wakes up
    second = await bucket.put_piece(upload_id, 10, b"b" * 5, second_epoch)
    pieces = [p async for p in bucket.pieces(upload_id)]
    assert [(p.seq, p.offset, p.data, p.epoch) for p in pieces] == [
        (first, 0, b"a" * 10, first_epoch), (second, 10, b"b" * 5, second_epoch)]
    await bucket.close(upload_id)
    with pytest.raises(StaleWriter):  # closed: neither the writer nor a new claim stores more
        await bucket.put_piece(upload_id, 15, b"d", second_epoch)
    with pytest.raises(StaleWriter):
        await bucket.claim(upload_id)


async def test_two_claims_from_the_same_view_one_wins(nc, monkeypatch) -> None:
    bucket = UploadBucket(nc)
    await bucket.ensure()
    upload_id = secrets.token_hex(32)
    seen = await bucket.current_fence(upload_id)
    await bucket.claim(upload_id)  # another request claims between our look and our claim
    monkeypatch.setattr(bucket, "current_fence", lambda _id: _as_coroutine(seen))
    with pytest.raises(StaleWriter, match="claimed it meanwhile"):
        await bucket.claim(upload_id)


async def _as_coroutine(value):
    return value


class LosesAcks(PieceWriter):
    """Sends the ack of the first attempt of the pieces at the chosen offsets nowhere: the
    piece is stored, its ack lost, as when a connection drops the reply."""

    def __init__(self, *args, lose: set[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lose = lose
        self.sends = 0

    def reply_subject(self, n: int, offset: int, attempt: int) -> str:
        self.sends += 1
        if attempt == 0 and offset in self.lose:
            return "_INBOX.nobody-listens"
        return super().reply_subject(n, offset, attempt)


async def test_pipelined_pieces_with_a_lost_ack_are_stored_once_in_order(nc) -> None:
    bucket = UploadBucket(nc)
    await bucket.ensure()
    upload_id = secrets.token_hex(32)
    epoch = await bucket.claim(upload_id)
    data = os.urandom(10 * 100_000)
    reported: list[Stored] = []
    async with LosesAcks(bucket, upload_id, epoch, window=4, ack_timeout=0.5,
                         on_stored=reported.append, lose={300_000, 700_000}) as writer:
        for start in range(0, len(data), 100_000):
            await writer.put(start, data[start : start + 100_000])
        await writer.drain()
    assert writer.sends == 12  # pieces 3 and 7 were published twice
    assert [p.offset for p in reported] == list(range(0, len(data), 100_000))
    seqs = [p.seq for p in reported]
    assert seqs == sorted(seqs) and len(set(seqs)) == 10
    pieces = [p async for p in bucket.pieces(upload_id)]
    assert [p.seq for p in pieces] == seqs  # each stored once, in offset order
    assert b"".join(p.data for p in pieces) == data


async def test_a_fenced_writer_with_pieces_in_flight_reports_only_what_was_stored_before(nc) -> None:
    bucket = UploadBucket(nc)
    await bucket.ensure()
    upload_id = secrets.token_hex(32)
    epoch = await bucket.claim(upload_id)
    reported: list[Stored] = []
    async with PieceWriter(bucket, upload_id, epoch, window=8, on_stored=reported.append) as writer:
        await writer.put(0, b"x" * 1000)
        await writer.drain()
        await bucket.claim(upload_id)  # a newer request
        with pytest.raises(StaleWriter):  # from a put, once the first refusal is back
            for n in range(1, 5):
                await writer.put(n * 1000, b"y" * 1000)
            await writer.drain()
        assert isinstance(writer.failure.exception(), StaleWriter)
    assert [p.offset for p in reported] == [0]
    assert [p.offset async for p in bucket.pieces(upload_id)] == [0]


async def test_a_finished_upload_is_an_ordinary_object(nc) -> None:
    bucket = UploadBucket(nc)
    await bucket.ensure()
    upload_id = secrets.token_hex(32)
    data = os.urandom(2_500_000)
    epoch = await bucket.claim(upload_id)
    starts = range(0, len(data), 1_000_000)
    async with PieceWriter(bucket, upload_id, epoch) as writer:
        for start in starts:
            await writer.put(start, data[start : start + 1_000_000])
        await writer.drain()
    await bucket.publish_meta(upload_id, len(data), len(starts), hashlib.sha256(data).digest(),
                              {"Content-Type": "application/pdf"})
    store = await nc.jetstream().object_store("uploads")
    got = await store.get(upload_id)  # nats-py checks the digest
    assert got.data == data and got.info.size == len(data)
    await bucket.purge(upload_id, with_meta=True)
    assert [p async for p in bucket.pieces(upload_id)] == []
    with pytest.raises(StaleWriter):  # a writer still sending after the purge stores nothing
        await bucket.put_piece(upload_id, 0, b"late", epoch)


async def test_a_piece_sent_as_buffers_is_stored_as_one_message_with_its_headers(nc) -> None:
    """Pieces skip nc.publish's copies by going on nats-py's outbound buffer as buffers of
    their own: that path must be taken (a nats-py upgrade that moves its buffer fails here,
    not silently slower) and store exactly what nc.publish would."""
    assert vectored(nc)
    bucket = UploadBucket(nc)
    await bucket.ensure()
    upload_id = secrets.token_hex(32)
    epoch = await bucket.claim(upload_id)
    parts = (b"head-", memoryview(b"--middle--")[2:8], os.urandom(300_000))
    async with PieceWriter(bucket, upload_id, epoch) as writer:
        await writer.put(0, parts)
        await writer.put(sum(map(len, parts)), b"tail")
        stored = await writer.drain()
    assert [s.data for s in stored] == [b"".join(parts), b"tail"]
    pieces = [p async for p in bucket.pieces(upload_id)]
    assert [(p.offset, p.data, p.epoch) for p in pieces] == [(0, b"".join(parts), epoch), (len(b"".join(parts)), b"tail", epoch)]
