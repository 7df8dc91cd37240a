"""An upload's bytes in the JetStream object store bucket, in the object store's own layout.

nats-py's `ObjectStore.put` cannot resume (every call writes under a new nuid, and a crash
leaves its chunks orphaned), so pieces are published here straight onto the object's chunk
subject `$O.<bucket>.C.<upload id>`:

- each piece (<= PIECE_SIZE) carries `Nats-Expected-Last-Subject-Sequence` = the sequence of
  the piece before it (0 for the first) and header `Upload-Offset`: the pieces of one upload
  form one contiguous chain, and a second writer working from a stale view is refused at its
  next piece (`StaleWriter`), never interleaved;
- `Nats-Msg-Id` `<upload id>:<offset>:<writer>`: a publish retried by the same writer (its
  ack was lost) is stored once: refused by the guard, it is recognised as the last piece;
- once complete, the meta message (`$O.<bucket>.M.<base64url(name)>`, `Nats-Rollup: sub`)
  makes it an ordinary object: `nats object get uploads <upload id>` reads it.

Used by the gateway (which holds the request body) and by the upload service (which reads
the pieces back to check and finish an upload, and purges them).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from contracts.upload import BUCKET, chunk_subject, object_stream
from services.runtime.eventstore import ensure_stream

WRONG_LAST_SEQUENCE = 10071
OFFSET_HEADER = "Upload-Offset"
READ_BATCH = 4  # pieces per direct get: ~4 MiB in flight at most


class StaleWriter(Exception):
    """Another writer stored a piece after the one this writer expected: its view is stale."""


class PieceStoreError(RuntimeError):
    """The bucket refused or could not read a piece (full, missing, bad reply)."""


@dataclass(frozen=True)
class Piece:
    seq: int
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


def meta_subject(name: str, bucket: str = BUCKET) -> str:
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


class UploadBucket:
    """The pieces of uploads in one object store bucket."""

    def __init__(self, nc: NATS, bucket: str = BUCKET, replicas: int = 1, max_bytes: int = -1) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.bucket = bucket
        self.stream = object_stream(bucket)
        self.replicas = replicas
        self.max_bytes = max_bytes

    async def ensure(self) -> None:
        """The bucket's stream, configured as `create_object_store` does (plus what nats-py
        leaves out: nothing), so any client binds it as an object store."""
        await ensure_stream(
            self.js,
            StreamConfig(
                name=self.stream,
                description="durachat uploads",
                subjects=[f"$O.{self.bucket}.C.>", f"$O.{self.bucket}.M.>"],
                max_bytes=self.max_bytes,
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                discard=DiscardPolicy.NEW,
                allow_rollup_hdrs=True,
                allow_direct=True,
            ),
        )

    def subject(self, upload_id: str) -> str:
        return chunk_subject(upload_id, self.bucket)

    async def put_piece(
        self, upload_id: str, offset: int, data: bytes, expected_seq: int, writer: str
    ) -> int:
        """Store one piece after sequence `expected_seq`; its stream sequence."""
        headers = {
            "Nats-Expected-Last-Subject-Sequence": str(expected_seq),
            "Nats-Msg-Id": f"{upload_id}:{offset}:{writer}",
            OFFSET_HEADER: str(offset),
        }
        for attempt in range(3):
            try:
                ack = await self.js.publish(self.subject(upload_id), data, headers=headers, timeout=5)
            except nats.errors.TimeoutError as exc:
                # The ack may be lost with the piece stored: the same message id again is
                # answered as a duplicate with the stored piece's sequence.
                if attempt == 2:
                    raise PieceStoreError(f"storing a piece of {upload_id} timed out") from exc
                continue
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    # Our own earlier attempt may be the piece stored (its ack was lost).
                    mine = await self._last_if_mine(upload_id, headers["Nats-Msg-Id"])
                    if mine is not None:
                        return mine
                    raise StaleWriter(f"{upload_id}: a piece was stored after {expected_seq}") from exc
                raise PieceStoreError(f"the bucket refused a piece of {upload_id}: {exc.description}") from exc
            return ack.seq
        raise AssertionError("unreachable")

    async def _last_if_mine(self, upload_id: str, msg_id: str) -> int | None:
        try:
            msg = await self.js.get_last_msg(self.stream, self.subject(upload_id), direct=True)
        except nats.js.errors.NotFoundError:
            return None
        return msg.seq if (msg.headers or {}).get("Nats-Msg-Id") == msg_id else None

    async def last_piece(self, upload_id: str) -> Piece | None:
        """The newest piece of the upload's chain, or None."""
        try:
            msg = await self.js.get_last_msg(self.stream, self.subject(upload_id), direct=True)
        except nats.js.errors.NotFoundError:
            return None
        return Piece(msg.seq or 0, int((msg.headers or {})[OFFSET_HEADER]), msg.data or b"")

    async def pieces(self, upload_id: str, after_seq: int = 0) -> AsyncGenerator[Piece, None]:
        """The upload's pieces stored after `after_seq`, in order, by batched direct gets (no
        consumer). Use inside `contextlib.aclosing` when you may stop early."""
        subject = self.subject(upload_id)
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        start = after_seq + 1
        try:
            while True:
                request = {"seq": start, "batch": READ_BATCH, "next_by_subj": subject}
                await self.nc.publish(
                    f"$JS.API.DIRECT.GET.{self.stream}", json.dumps(request).encode(), reply=inbox
                )
                got = pending = 0
                while True:
                    try:
                        msg = await sub.next_msg(timeout=5)
                    except nats.errors.TimeoutError:
                        raise PieceStoreError(f"reading the pieces of {upload_id} timed out") from None
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status is not None:
                        if status in ("204", "404"):
                            break
                        raise PieceStoreError(f"reading the pieces of {upload_id} failed: {headers}")
                    seq = int(headers["Nats-Sequence"])
                    yield Piece(seq, int(headers[OFFSET_HEADER]), msg.data)
                    pending = int(headers.get("Nats-Num-Pending", "0"))
                    start = seq + 1
                    got += 1
                if got == 0 or pending == 0:
                    return
        finally:
            await sub.unsubscribe()

    async def publish_meta(
        self, upload_id: str, size: int, chunks: int, sha256: bytes, headers: dict[str, str]
    ) -> None:
        """Make the upload an ordinary object of the bucket, named by its upload id."""
        info = {
            "name": upload_id,
            "bucket": self.bucket,
            "nuid": upload_id,
            "size": size,
            "chunks": chunks,
            "digest": "SHA-256=" + base64.urlsafe_b64encode(sha256).decode(),
            "headers": headers,
            "options": {"max_chunk_size": 1 << 20},
        }
        await self.js.publish(
            meta_subject(upload_id, self.bucket),
            json.dumps(info).encode(),
            headers={"Nats-Rollup": "sub"},
            timeout=5,
        )

    async def purge(self, upload_id: str, with_meta: bool) -> None:
        """Drop the upload's pieces (and its object store entry)."""
        await self.js.purge_stream(self.stream, subject=self.subject(upload_id))
        if with_meta:
            await self.js.purge_stream(self.stream, subject=meta_subject(upload_id, self.bucket))


async def read_bytes(
    bucket: UploadBucket, upload_id: str, ranges: list[tuple[int, int]], start: int, end: int
) -> AsyncGenerator[bytes, None]:
    """The bytes [start, end) of a stored upload, from the accepted range holding `start`
    (`ranges`: (offset, first piece sequence) of each, as the upload's view lists them)."""
    after = 0
    for offset, first_seq in ranges:
        if offset <= start:
            after = first_seq - 1
    async with aclosing(bucket.pieces(upload_id, after_seq=after)) as pieces:
        async for piece in pieces:
            if piece.end <= start:
                continue
            if piece.offset >= end:
                break
            yield piece.data[max(0, start - piece.offset) : end - piece.offset]
            if piece.end >= end:
                break
