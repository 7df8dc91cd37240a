"""An upload's bytes in the JetStream object store bucket, in the object store's own layout.

nats-py's `ObjectStore.put` cannot resume (every call writes under a new nuid, and a crash
leaves its chunks orphaned), so pieces are published here straight onto the object's chunk
subject `$O.<bucket>.C.<upload id>`, fenced by writer epoch:

- a request that writes bytes first claims a write epoch: it publishes a fence message on
  `$O.<bucket>.C.<upload id>.w` guarded by the sequence of the fence it saw (two claimers:
  one wins); the epoch is that message's stream sequence;
- each piece (<= PIECE_SIZE) carries `Nats-Expected-Last-Subject-Sequence` = its epoch for
  the fence subject (`Nats-Expected-Last-Subject-Sequence-Subject`): the server refuses it
  (`StaleWriter`) once a newer epoch (or the closing fence) exists, so a stale writer cannot
  add a byte after it was fenced. No piece waits for the one before: a writer keeps a window
  of pieces in flight (`PieceWriter`), acks handled in order;
- headers `Upload-Offset` and `Upload-Epoch`, and `Nats-Msg-Id` `<upload id>:<offset>:<epoch>`:
  a publish retried by the same writer (its ack was lost) is stored once;
- a stale writer's pieces stored before it was fenced, but never accepted, may sit between
  the accepted ones: the upload object names its ranges by (first, last sequence, epoch) and
  finishing closes the fence, deletes every piece outside the accepted ranges and publishes
  the meta message (`$O.<bucket>.M.<base64url(name)>`, `Nats-Rollup: sub`): the finished
  file is an ordinary object, `nats object get uploads <upload id>` reads it.

Used by the gateway (which holds the request body) and by the upload service (which reads
the pieces back to check and finish an upload, and purges them).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from contracts.upload import BUCKET, chunk_subject, fence_subject, object_stream
from services.runtime.eventstore import DirectGetError, direct_get, ensure_stream

WRONG_LAST_SEQUENCE = 10071
OFFSET_HEADER = "Upload-Offset"
EPOCH_HEADER = "Upload-Epoch"
FENCE_HEADER = "Upload-Fence"  # "open" (a writer's claim) or "closed" (no more pieces)
READ_BATCH = 4  # pieces per direct get: ~4 MiB in flight at most
WINDOW = 4  # pieces a writer has in flight (measured: 2-4 double the MB/s of one at a time)
ACK_TIMEOUT = 5.0


class StaleWriter(Exception):
    """A newer writer claimed the upload (or it was closed): this writer may store no more."""


class PieceStoreError(RuntimeError):
    """The bucket refused or could not read a piece (full, missing, bad reply)."""


@dataclass(frozen=True)
class Piece:
    seq: int
    offset: int
    data: bytes
    epoch: int = 0  # pieces stored before epochs were written count as epoch 0

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True)
class Fence:
    seq: int  # 0: none yet
    closed: bool


Buffers = tuple[bytes | memoryview, ...]  # a piece as the buffers it came in, sent as they are


def buffers_of(data: bytes | Buffers) -> Buffers:
    return (data,) if isinstance(data, bytes | memoryview) else data


@dataclass(frozen=True)
class Stored:
    """A piece the bucket acknowledged."""

    seq: int
    offset: int
    parts: Buffers
    size: int

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


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

    def fence(self, upload_id: str) -> str:
        return fence_subject(upload_id, self.bucket)

    async def current_fence(self, upload_id: str) -> Fence:
        try:
            msg = await self.js.get_last_msg(self.stream, self.fence(upload_id), direct=True)
        except nats.js.errors.NotFoundError:
            return Fence(0, False)
        return Fence(msg.seq or 0, (msg.headers or {}).get(FENCE_HEADER) == "closed")

    async def claim(self, upload_id: str) -> int:
        """A new write epoch: every earlier writer is refused from now on. StaleWriter if
        the upload is closed, or another request claimed it meanwhile."""
        seen = await self.current_fence(upload_id)
        if seen.closed:
            raise StaleWriter(f"{upload_id} takes no more bytes")
        try:
            ack = await self.js.publish(
                self.fence(upload_id), b"",
                headers={"Nats-Expected-Last-Subject-Sequence": str(seen.seq), FENCE_HEADER: "open"},
                timeout=ACK_TIMEOUT,
            )
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise StaleWriter(f"{upload_id}: another request claimed it meanwhile") from exc
            raise PieceStoreError(f"the bucket refused a claim of {upload_id}: {exc.description}") from exc
        except nats.errors.TimeoutError as exc:
            raise PieceStoreError(f"claiming {upload_id} timed out") from exc
        return ack.seq

    async def close(self, upload_id: str) -> int:
        """The closing fence: no writer stores a piece after it (unguarded: it always wins)."""
        try:
            ack = await self.js.publish(self.fence(upload_id), b"",
                                        headers={FENCE_HEADER: "closed", "Nats-Rollup": "sub"},
                                        timeout=ACK_TIMEOUT)
        except (nats.errors.TimeoutError, nats.js.errors.APIError) as exc:
            raise PieceStoreError(f"closing {upload_id} failed: {exc}") from exc
        return ack.seq

    def piece_headers(self, upload_id: str, offset: int, epoch: int) -> dict[str, str]:
        return {
            "Nats-Expected-Last-Subject-Sequence": str(epoch),
            "Nats-Expected-Last-Subject-Sequence-Subject": self.fence(upload_id),
            "Nats-Msg-Id": f"{upload_id}:{offset}:{epoch}",
            OFFSET_HEADER: str(offset),
            EPOCH_HEADER: str(epoch),
        }

    async def put_piece(self, upload_id: str, offset: int, data: bytes, epoch: int) -> int:
        """Store one piece of write epoch `epoch`, waiting for its ack; its stream sequence."""
        async with PieceWriter(self, upload_id, epoch, window=1) as writer:
            await writer.put(offset, data)
            stored = await writer.drain()
        return stored[0].seq

    async def pieces(self, upload_id: str, after_seq: int = 0) -> AsyncGenerator[Piece, None]:
        """The upload's pieces stored after `after_seq`, in order, by batched direct gets (no
        consumer). Use inside `contextlib.aclosing` when you may stop early."""
        stored = direct_get(
            self.nc, self.stream, after_seq + 1, subject=self.subject(upload_id), batch=READ_BATCH
        )
        async with aclosing(stored) as messages:
            try:
                async for msg in messages:
                    headers = msg.headers
                    yield Piece(msg.sequence, int(headers[OFFSET_HEADER]), msg.data,
                                int(headers.get(EPOCH_HEADER, 0)))
            except nats.errors.TimeoutError:
                raise PieceStoreError(f"reading the pieces of {upload_id} timed out") from None
            except DirectGetError as exc:
                raise PieceStoreError(f"reading the pieces of {upload_id} failed: {exc}") from None

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

    async def delete(self, seqs: Sequence[int]) -> None:
        """Drop single pieces (a stale writer's, never accepted) from the bucket."""
        for seq in seqs:
            try:
                await self.js.delete_msg(self.stream, seq)
            except nats.js.errors.NotFoundError:
                pass  # deleted by an earlier run of the same finish
            except (nats.errors.TimeoutError, nats.js.errors.APIError) as exc:
                raise PieceStoreError(f"deleting piece {seq} failed: {exc}") from exc

    async def purge(self, upload_id: str, with_meta: bool) -> None:
        """Drop the upload's pieces (and its object store entry), after closing it so no
        writer still sending adds a piece afterwards."""
        await self.close(upload_id)
        await self.js.purge_stream(self.stream, subject=self.subject(upload_id))
        if with_meta:
            await self.js.purge_stream(self.stream, subject=meta_subject(upload_id, self.bucket))


def hpub_head(subject: str, reply: str, headers: dict[str, str], size: int) -> bytes:
    """The HPUB line and header block of a message of `size` payload bytes (the headers are
    ours: names and values without CR or LF)."""
    block = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return f"HPUB {subject} {reply} {len(block)} {len(block) + size}\r\n{block}".encode()


def vectored(nc: NATS) -> bool:
    """Whether pieces can go on this client's outbound buffer as buffers of their own
    (nats-py's buffer and flusher, as of 2.16; a test in tests/integration/test_upload_store.py
    fails when an upgrade moves them)."""
    return all(hasattr(nc, name) for name in ("_pending", "_pending_data_size", "_max_pending_size",
                                                  "_flush_pending", "_flush_queue"))


async def publish_piece(
    nc: NATS, subject: str, reply: str, headers: dict[str, str], parts: Buffers, size: int
) -> None:
    """One piece on its chunk subject, its ack to come on `reply`.

    `nc.publish` takes one bytes and joins the HPUB line, the headers and it into another:
    with the join of the body's chunks into a piece, three copies of every uploaded byte, on
    the event loop the body is read by. Here the piece's buffers (the chunks the HTTP server
    handed over) are queued on nats-py's outbound buffer as they are, after the head; the
    flusher hands them to the transport's writelines, which under uvloop sends them with one
    vectored write and no copy. While the client is not connected (reconnecting, closed,
    draining), through `nc.publish`, which knows what each of those allows."""
    if not (nc.is_connected and vectored(nc)):
        await nc.publish(subject, b"".join(parts), reply=reply, headers=headers)
        return
    head = hpub_head(subject, reply, headers, size)
    pending: list[Any] = nc._pending  # nats-py keeps bytes there; writelines takes any buffer
    pending.append(head)
    pending.extend(parts)
    pending.append(b"\r\n")
    nc._pending_data_size += len(head) + size + 2
    nc.stats["out_msgs"] += 1
    nc.stats["out_bytes"] += size
    if nc._pending_data_size > nc._max_pending_size:
        await nc._flush_pending(force_flush=True)  # as nc.publish does past the buffer's size
    elif nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


class PieceWriter:
    """Publishes the pieces of one write epoch with up to `window` of them in flight. Acks
    are taken in order, as they arrive, by a task of its own: `on_stored` hears of each
    acknowledged piece, in offset order, only once every piece before it was acknowledged.
    A lost ack is retried with the same message id (stored once). The first refusal
    (StaleWriter, PieceStoreError) ends the writer: nothing after the refused piece is
    reported, `failure` holds it, and `put`/`drain` raise it."""

    def __init__(
        self, bucket: UploadBucket, upload_id: str, epoch: int, window: int = WINDOW,
        ack_timeout: float = ACK_TIMEOUT, on_stored: Callable[[Stored], None] | None = None,
    ) -> None:
        self.bucket = bucket
        self.upload_id = upload_id
        self.epoch = epoch
        self.window = max(1, window)
        self.ack_timeout = ack_timeout
        self.stored: list[Stored] = []
        self.on_stored = on_stored or self.stored.append
        self.last_seq = 0
        self._subject = bucket.subject(upload_id)
        self._inflight: deque[tuple[int, Buffers, int, asyncio.Future[Msg]]] = deque()
        self._futures: dict[str, asyncio.Future[Msg]] = {}
        self._inbox = ""
        self._sent = 0
        self._sub: Any = None
        self._taker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PieceWriter:
        loop = asyncio.get_running_loop()
        self.failure: asyncio.Future[None] = loop.create_future()
        self.failure.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        self._slots = asyncio.Semaphore(self.window)
        self._more = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._inbox = self.bucket.nc.new_inbox()
        self._sub = await self.bucket.nc.subscribe(self._inbox + ".*", cb=self._on_reply)
        self._taker = asyncio.create_task(self._take_all())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._taker is not None:
            self._taker.cancel()
            await asyncio.gather(self._taker, return_exceptions=True)
        for *_, future in self._inflight:
            future.cancel()
        self._inflight.clear()
        self._futures.clear()
        if not self.failure.done():
            self.failure.cancel()
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_reply(self, msg: Msg) -> None:
        future = self._futures.pop(msg.subject, None)
        if future is not None and not future.done():
            future.set_result(msg)

    def reply_subject(self, n: int, offset: int, attempt: int) -> str:
        """Where the ack of the n-th publish (the `attempt`-th of the piece at `offset`) goes."""
        return f"{self._inbox}.{n}"

    async def _send(self, offset: int, parts: Buffers, size: int, attempt: int = 0) -> asyncio.Future[Msg]:
        self._sent += 1
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._futures[f"{self._inbox}.{self._sent}"] = future
        await publish_piece(
            self.bucket.nc, self._subject, self.reply_subject(self._sent, offset, attempt),
            self.bucket.piece_headers(self.upload_id, offset, self.epoch), parts, size,
        )
        return future

    def _raise_if_failed(self) -> None:
        if self.failure.done() and not self.failure.cancelled():
            self.failure.result()

    async def _until(self, awaitable: Any) -> None:
        """Wait for `awaitable`, or raise the writer's failure if that comes first."""
        task = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait({task, self.failure}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
        self._raise_if_failed()

    async def put(self, offset: int, data: bytes | Buffers) -> None:
        """Send a piece, one bytes or the buffers it came in (after waiting for room in the
        window). The buffers must not change until the piece is acknowledged."""
        self._raise_if_failed()
        if self._slots.locked():
            await self._until(self._slots.acquire())
        else:
            await self._slots.acquire()  # room in the window: no wait, no task
        parts = buffers_of(data)
        size = sum(map(len, parts))
        self._inflight.append((offset, parts, size, await self._send(offset, parts, size)))
        self._idle.clear()
        self._more.set()

    async def drain(self) -> list[Stored]:
        """Wait for every piece in flight; what was stored (when no `on_stored` was given)."""
        await self._until(self._idle.wait())
        return self.stored

    async def _take_all(self) -> None:
        try:
            while True:
                while not self._inflight:
                    self._idle.set()
                    self._more.clear()
                    await self._more.wait()
                await self._take()
                self._slots.release()
        except Exception as exc:
            self.failure.set_exception(exc)

    async def _take(self) -> None:
        offset, parts, size, future = self._inflight[0]
        for attempt in range(3):
            try:
                msg = await asyncio.wait_for(future, self.ack_timeout)
                break
            except TimeoutError:
                # The ack may be lost with the piece stored: the same message id again is
                # answered as a duplicate with the stored piece's sequence.
                if attempt == 2:
                    raise PieceStoreError(f"storing a piece of {self.upload_id} timed out") from None
                future = await self._send(offset, parts, size, attempt + 1)
        self._inflight.popleft()
        seq = self._seq_of(msg)
        if seq <= self.last_seq:
            # A retry stored after a later piece: the chain of this epoch ends here.
            raise PieceStoreError(f"a piece of {self.upload_id} was stored out of order")
        self.last_seq = seq
        self.on_stored(Stored(seq, offset, parts, size))

    def _seq_of(self, msg: Msg) -> int:
        if (msg.headers or {}).get("Status") == "503":
            raise PieceStoreError(f"the bucket's stream is not available for {self.upload_id}")
        try:
            reply = json.loads(msg.data)
        except ValueError:
            raise PieceStoreError(f"bad ack for a piece of {self.upload_id}: {msg.data[:100]!r}") from None
        error = reply.get("error")
        if error:
            if error.get("err_code") == WRONG_LAST_SEQUENCE:
                raise StaleWriter(f"{self.upload_id}: a newer writer claimed it (or it was closed)")
            raise PieceStoreError(f"the bucket refused a piece of {self.upload_id}: {error.get('description')}")
        return int(reply["seq"])


async def read_bytes(
    bucket: UploadBucket, upload_id: str, ranges: list[tuple[int, int]], start: int, end: int,
    epochs: list[int] | None = None,
) -> AsyncGenerator[bytes, None]:
    """The bytes [start, end) of a stored upload, from the accepted range holding `start`
    (`ranges`: (offset, first piece sequence) of each, as the upload's view lists them;
    `epochs`: each range's write epoch). Only the chain of accepted pieces is read: a stale
    writer's piece not yet deleted by finishing is passed over."""
    after = 0
    index = 0
    for i, (offset, first_seq) in enumerate(ranges):
        if offset <= start:
            after, index = first_seq - 1, i
    position = ranges[index][0] if ranges else 0
    async with aclosing(bucket.pieces(upload_id, after_seq=after)) as pieces:
        async for piece in pieces:
            while index + 1 < len(ranges) and piece.seq >= ranges[index + 1][1]:
                index += 1
            if piece.offset != position or (epochs and piece.epoch != epochs[index]):
                continue
            position = piece.end
            if piece.end <= start:
                continue
            yield piece.data[max(0, start - piece.offset) : end - piece.offset]
            if piece.end >= end:
                break
