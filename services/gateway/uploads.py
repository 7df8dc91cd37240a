"""`/api/uploads`: the tus 1.0 resumable upload protocol (core, creation,
creation-with-upload, expiration, checksum, termination), and GET of a finished file.

The gateway holds the request body and writes it, piece by piece as it arrives, into the
object store bucket (services/upload/store.py), a window of pieces in flight; it never holds
more than a few pieces (about 1 MiB each) of it, except that a PATCH with `Upload-Checksum`
is spooled (to disk past 8 MiB) until its digest is checked, so a refused body stores
nothing. The upload object (services/upload) is told which ranges are stored and decides
everything else; there are no locks: a request claims a write epoch before its first piece,
which fences every earlier writer (its next piece is refused by the bucket: 409), and pieces
a dead request stored without reporting them are found and recorded by the next HEAD or
PATCH. A gateway keeps a write session per upload it writes (`WriteSession`), so the next
PATCH at the offset it reached goes on in the same epoch asking no one, and a PATCH answers
once its pieces are acknowledged while their record is on its way (see the class).
While a room's upload is stored, its progress goes to the room's sockets (`announce`,
`ProgressFanout`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hashlib
import logging
import secrets
import tempfile
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from contracts.common import Command, ErrorCode, ErrorReply
from contracts.ratelimit import ChargeUploadBytes, QuotaClient, UploadBytesUsage
from contracts.upload import (
    GONE_STATUSES,
    PIECE_SIZE,
    READABLE_STATUSES,
    CreateUpload,
    GetUpload,
    RecordRange,
    RejectUpload,
    TerminateUpload,
    UploadClient,
    UploadProgress,
    UploadView,
    is_upload_id,
    progress_subject,
)
from services.gateway.identity import SESSION_COOKIE, Identities, InvalidToken, KeysUnavailable
from services.gateway.protocol import FrameError, encode
from services.gateway.ratelimit import client_address
from services.readstore import queries
from services.readstore.store import ReadStoreError, open_read_store
from services.runtime import metrics
from services.settings import UploadRules
from services.upload.checks import (
    CHECKSUM_ALGORITHMS,
    UnsupportedChecksum,
    UploadRefused,
    check_type,
    encode_metadata,
    parse_checksum,
    parse_metadata,
    sniff,
)
from services.upload.store import (
    WINDOW,
    Buffers,
    PieceStoreError,
    PieceWriter,
    StaleWriter,
    Stored,
    UploadBucket,
    read_bytes,
)

log = logging.getLogger(__name__)

router = APIRouter()

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,expiration,checksum,termination"
OFFSET_STREAM = "application/offset+octet-stream"
RECORD_EVERY = 16  # pieces per recorded range: ~16 MiB per command to the upload object
READ_AHEAD = 2  # pieces of a body read while the one before is being stored
FIRST_PIECE = 256 * 1024  # a PATCH's first piece: the bucket, idle since the last PATCH, starts sooner
PROGRESS_EVERY = 0.25  # seconds: at most one progress frame per upload this often
SPOOL_IN_MEMORY = 8 * 1024 * 1024  # a checksummed body beyond this is spooled to disk


M_TRIM_THRESHOLD = -1  # glibc mallopt parameters
M_MMAP_THRESHOLD = -3
KEEP_BELOW = 4 * 1024 * 1024  # allocations under this come from the heap, reused
TRIM_ABOVE = 32 * 1024 * 1024  # free heap top returned to the OS past this


def keep_piece_buffers() -> bool:
    """Have glibc reuse the memory of pieces. By default each allocation from 128 KiB on
    gets its own fresh mapping, unmapped when freed, so every piece (1 MiB) and nats-py's
    copies of it in a publish touch new zeroed pages: page faults and clearing on every
    byte, measured at a fifth of the gateway's CPU per uploaded byte. With the thresholds
    fixed (glibc's own adaptive ones stop short of it), those buffers come from the heap
    and are reused; the heap keeps at most TRIM_ABOVE free. False where libc is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BELOW) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))
    except (OSError, AttributeError):
        return False


class TusError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class Uploads:
    """What the upload endpoints use, built once per gateway on first use."""

    rules: UploadRules
    bucket: UploadBucket
    client: UploadClient
    quotas: QuotaClient
    identities: Identities
    trusted_proxies: frozenset[str]
    sessions: OrderedDict[str, WriteSession] = field(default_factory=OrderedDict)
    # The ranges' sha256 is computed off the event loop (hashlib lets go of the GIL for large
    # buffers), on one thread: pieces are hashed in the order they are sent (Receiver).
    hasher: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-sha256"))


async def uploads_of(request: Request) -> Uploads:
    state = request.app.state
    found = getattr(state, "uploads", None)
    if found is None:
        gateway = state.gateway
        rules = UploadRules()
        bucket = UploadBucket(gateway.nc, rules.upload_bucket, replicas=gateway.settings.stream_replicas)
        await bucket.ensure()
        found = state.uploads = Uploads(
            rules,
            bucket,
            UploadClient(gateway.nc, timeout=gateway.settings.request_timeout),
            QuotaClient(gateway.nc, timeout=2.0),
            gateway.identities,
            frozenset(gateway.settings.trusted_proxies),
        )
    return found


async def request_identity(request: Request, uploads: Uploads) -> str | None:
    """Who makes this request: the identity of its bearer token, else of its session cookie
    (a guest the gateway issued, or a signed-in user), or None (no credential). The one
    place that knows how a request says who it is."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TusError(403, "Authorization must be 'Bearer <token>'.")
        what = "token"
    elif cookie := request.cookies.get(SESSION_COOKIE):
        token, what = cookie, "session cookie"
    else:
        return None
    try:
        return (await uploads.identities.verify_async(token.strip())).user_id
    except InvalidToken as exc:
        raise TusError(403, f"Bad {what}: {exc}.") from None
    except KeysUnavailable as exc:
        raise TusError(503, f"The identity provider's keys cannot be read now: {exc}.") from None


def quota_key(request: Request, uploads: Uploads, identity: str | None) -> str:
    """Whose daily upload bytes a request counts in: the user, or the client's address."""
    if identity is not None:
        return identity
    peer = request.client.host if request.client else None
    return "ip:" + client_address(peer, request.headers.get("x-forwarded-for"), uploads.trusted_proxies)


async def charge_quota(uploads: Uploads, key: str, length: int) -> None:
    """Count the file's bytes in the uploader's day before any is stored, as AI requests
    are counted: refused over quota, and refused when quotas cannot be checked."""
    if length == 0:
        return
    reply = await uploads.quotas.send(key, ChargeUploadBytes(bytes=length))
    if isinstance(reply, ErrorReply) or not isinstance(reply, UploadBytesUsage):
        log.warning("upload quota of %s could not be checked: %s", key, reply)
        raise TusError(503, "Uploads are paused: quotas cannot be checked right now. Try again later.",
                       {"Retry-After": "5"})
    if not reply.allowed:
        raise TusError(413, reply.reason or "Daily upload quota reached.")


def may_write(identity: str | None, view: UploadView) -> bool:
    """An anonymous upload's 256-bit id is its capability; a user's upload is theirs."""
    return view.owner is None or view.owner == identity


def may_read(identity: str | None, view: UploadView) -> bool:
    """The uploader, and whoever saw the upload in its room (its id is only ever shown
    there, as a private room's id is only known to its members)."""
    return may_write(identity, view) or view.room is not None


# --- responses ------------------------------------------------------------------------------


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def tus_headers(view: UploadView | None = None, **extra: Any) -> dict[str, str]:
    headers = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
    if view is not None:
        headers["Upload-Offset"] = str(view.offset)
        if view.expires_at is not None:
            headers["Upload-Expires"] = http_date(view.expires_at)
    headers.update({k.replace("_", "-"): str(v) for k, v in extra.items()})
    return headers


def refusal(exc: TusError, body: bool = True) -> Response:
    """The tus answer to a refused request: its status, and why (no body for a HEAD)."""
    metrics.UPLOAD_REFUSALS.labels(status=str(exc.status)).inc()
    headers = {"Tus-Resumable": TUS_VERSION, **exc.headers}
    if not body:
        return Response(status_code=exc.status, headers=headers)
    return Response(str(exc) + "\n", status_code=exc.status, headers=headers, media_type="text/plain")


STATUS_OF = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.GONE: 410,
    ErrorCode.MISMATCH: 409,
    ErrorCode.EXISTS: 409,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.TOO_LONG: 413,
}


async def ask(uploads: Uploads, upload_id: str, command: Command) -> UploadView:
    reply = await uploads.client.send(upload_id, command)
    if isinstance(reply, ErrorReply):
        status = STATUS_OF.get(reply.code, 503)
        raise TusError(status, reply.message, {"Retry-After": "1"} if status == 503 else None)
    return reply


def check_version(request: Request) -> None:
    version = request.headers.get("tus-resumable")
    if version != TUS_VERSION:
        raise TusError(
            412,
            f"Tus-Resumable {version!r} is not supported; this server speaks tus {TUS_VERSION}.",
            {"Tus-Version": TUS_VERSION},
        )


async def opened(request: Request, uploads: Uploads, upload_id: str, *, reading: bool = False) -> UploadView:
    """The upload the request names, if it exists, is not gone and the requester may use it."""
    identity = await request_identity(request, uploads)
    if not is_upload_id(upload_id):
        raise TusError(404, "No such upload: an upload id is 64 lowercase hex digits.")
    view = await ask(uploads, upload_id, GetUpload())
    if not (may_read if reading else may_write)(identity, view):
        raise TusError(403, "This upload belongs to another user.")
    if view.status in GONE_STATUSES:
        uploads.sessions.pop(upload_id, None)  # this gateway's session of it, if any
        raise TusError(410, gone_reason(view))
    return view


def gone_reason(view: UploadView) -> str:
    if view.status == "rejected":
        return f"The upload was rejected: {view.reason}"
    return f"The upload was {view.status}."


# --- progress to the room ------------------------------------------------------------------


async def announce(nc: NATS, view: UploadView) -> None:
    """Tell the sockets of the upload's room how far it got (best effort: core NATS)."""
    assert view.room is not None
    progress = UploadProgress(
        id=view.id, room=view.room, name=view.name, mime=view.mime, received=view.offset,
        total=view.length, status="stored" if view.offset == view.length else "receiving",
    )
    try:
        await nc.publish(progress_subject(view.room), progress.model_dump_json().encode())
    except Exception as exc:  # progress is not worth failing an upload for
        log.info("progress of upload %s not sent: %r", view.id[:12], exc)


def progress_frame(progress: UploadProgress) -> str:
    """`{"upload": {...}}`: no name, message or timestamp, so the demo's client (and any
    client that only knows the demo's frames) ignores it."""
    return encode({"upload": {
        "id": progress.id, "name": progress.name, "type": progress.mime,
        "received": progress.received, "total": progress.total, "status": progress.status,
    }})


class ProgressFanout:
    """Hands the upload progress of a room to this gateway's sockets in it: one
    subscription per room while a socket is in it."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.rooms: dict[str, dict[int, Callable[[str], None]]] = {}
        self.subscriptions: dict[str, Subscription] = {}

    async def attach(self, room: str, listener_id: int, deliver: Callable[[str], None]) -> None:
        listeners = self.rooms.get(room)
        if listeners is not None:
            listeners[listener_id] = deliver
            return
        listeners = self.rooms[room] = {listener_id: deliver}

        async def on_message(msg: Msg) -> None:
            try:
                frame = progress_frame(UploadProgress.model_validate_json(msg.data))
            except ValidationError as exc:
                log.error("dropped upload progress of room %s outside the contract: %s", room, exc)
                return
            for each in list(listeners.values()):
                each(frame)

        subscription = await self.nc.subscribe(progress_subject(room), cb=on_message)
        if self.rooms.get(room) is listeners and listeners:
            self.subscriptions[room] = subscription
        else:  # every socket left while subscribing
            await subscription.unsubscribe()

    async def detach(self, room: str, listener_id: int) -> None:
        listeners = self.rooms.get(room)
        if listeners is None:
            return
        listeners.pop(listener_id, None)
        if not listeners:
            del self.rooms[room]
            subscription = self.subscriptions.pop(room, None)
            if subscription is not None:
                await subscription.unsubscribe()


# --- the pieces of a body -------------------------------------------------------------------


async def reconcile(uploads: Uploads, view: UploadView, attempts: int = 3) -> UploadView:
    """Record pieces of the current write epoch stored after the upload's last accepted one
    (a request that died between storing and reporting them, or one still running): the
    bucket holds the truth. Pieces of other epochs (fenced writers) are not the file's."""
    for _ in range(attempts):
        if view.status != "receiving":
            return view
        fence = await uploads.bucket.current_fence(view.id)
        if fence.closed:
            return view
        digest = hashlib.sha256()
        first = end_seq = 0
        position = view.offset
        async with aclosing(uploads.bucket.pieces(view.id, after_seq=view.last_seq)) as pieces:
            async for piece in pieces:
                if piece.epoch != fence.seq or piece.offset != position or piece.end > view.length:
                    continue
                digest.update(piece.data)
                first = first or piece.seq
                end_seq = piece.seq
                position = piece.end
        if not end_seq:
            return view
        command = RecordRange(
            offset=view.offset, length=position - view.offset, first_seq=first, last_seq=end_seq,
            sha256=digest.hexdigest(), epoch=fence.seq,
        )
        reply = await uploads.client.send(view.id, command)
        if isinstance(reply, UploadView):
            view = reply
        elif reply.code == ErrorCode.MISMATCH:  # someone recorded meanwhile: look again
            view = await ask(uploads, view.id, GetUpload())
        else:
            raise TusError(STATUS_OF.get(reply.code, 503), reply.message)
    return view


STALE = "Another request wrote to this upload meanwhile; HEAD it for the offset and resume."


@dataclass(eq=False)
class WriteSession:
    """This gateway's hold on an upload it writes, kept across PATCHes: its write epoch,
    where the bytes the bucket acknowledged end, and the record of them on its way to the
    upload object. The next PATCH at that offset continues the epoch without asking anyone
    (no GetUpload, no claim): had another request claimed the upload meanwhile, the bucket
    refuses the first piece (409) and the session is dropped. A HEAD or PATCH of the upload
    on this gateway waits for the record on its way first; one on another gateway finds the
    unrecorded pieces in the bucket (`reconcile`)."""

    view: UploadView
    epoch: int = 0  # 0: none claimed yet
    offset: int = 0
    last_seq: int = 0
    recording: asyncio.Future[UploadView] | None = None
    busy: bool = False
    used: float = 0.0
    reported: float = float("-inf")  # when the room last heard of its progress (monotonic)

    @classmethod
    def of(cls, view: UploadView) -> WriteSession:
        return cls(view, offset=view.offset, last_seq=view.last_seq, used=time.monotonic())

    def usable(self, offset: int) -> bool:
        """Whether a PATCH at `offset` may go on in this session."""
        expired = self.view.expires_at is not None and self.view.expires_at <= time.time()
        return not self.busy and self.offset == offset and not expired and not self.failed()

    def failed(self) -> bool:
        """Whether the last record failed (the next request looks at the upload again)."""
        done = self.recording is not None and self.recording.done()
        return done and (self.recording.cancelled() or self.recording.exception() is not None)  # type: ignore[union-attr]

    async def settled(self) -> None:
        """Wait for the record on its way (its failure is for whoever looks next)."""
        if self.recording is not None:
            await asyncio.gather(self.recording, return_exceptions=True)

    def current(self) -> UploadView:
        """The view as this session knows it: the acknowledged bytes count."""
        if self.view.offset == self.offset:
            return self.view
        return self.view.model_copy(update={"offset": self.offset, "last_seq": self.last_seq})


SESSIONS = 1024  # write sessions a gateway keeps (the least recently used go first)
SESSION_IDLE = 600.0  # seconds an unused session is kept


def session_of(uploads: Uploads, upload_id: str) -> WriteSession | None:
    session = uploads.sessions.get(upload_id)
    if session is not None and not session.busy and time.monotonic() - session.used > SESSION_IDLE:
        uploads.sessions.pop(upload_id, None)
        return None
    return session


def keep_session(uploads: Uploads, session: WriteSession) -> None:
    session.used = time.monotonic()
    uploads.sessions[session.view.id] = session
    uploads.sessions.move_to_end(session.view.id)
    while len(uploads.sessions) > SESSIONS:
        uploads.sessions.popitem(last=False)


def drop_session(uploads: Uploads, session: WriteSession) -> None:
    if uploads.sessions.get(session.view.id) is session:
        del uploads.sessions[session.view.id]


async def settle_session(uploads: Uploads, upload_id: str) -> None:
    """Before looking at an upload: the record this gateway has on its way, in (a request
    writing it meanwhile is not waited for: a HEAD never waits for a PATCH)."""
    session = session_of(uploads, upload_id)
    if session is not None and not session.busy:
        await session.settled()


def hashed(digest: Any, parts: Buffers) -> Any:
    """`digest` taken on over `parts`, and a copy of it as it then stands."""
    for part in parts:
        digest.update(part)
    return digest.copy()


class Receiver:
    """Stores one request body into an upload at its session's offset: claims a write epoch
    (fencing every earlier writer) before its first piece unless the session holds one,
    keeps a window of pieces in flight (store.PieceWriter), and records what was
    acknowledged every RECORD_EVERY pieces and at the end, each record sent once the one
    before was answered, without holding the pieces back meanwhile."""

    def __init__(self, uploads: Uploads, session: WriteSession, window: int = WINDOW) -> None:
        self.uploads = uploads
        self.session = session
        self.view = session.view
        self.window = window
        self.writer: PieceWriter | None = None
        self._claiming: asyncio.Future[int] | None = None
        self.offset = session.offset  # where the next piece sent goes
        self.hasher = uploads.hasher
        # Each piece is hashed as it is sent, while its bytes are still in the CPU's cache
        # (measured: 1.7 against 1.15 GB/s for the same bytes read back later): the range's
        # digest runs over the pieces sent, and each piece in flight keeps the digest as it
        # stood after it, so a range ends at its last acknowledged piece whatever came after.
        self.in_flight: deque[tuple[int, Buffers, Future[Any]]] = deque()
        self._start_range()

    @property
    def epoch(self) -> int:
        return self.session.epoch

    def _start_range(self) -> None:
        self.range_offset = self.session.offset
        self.range_first = 0
        self.range_pieces = 0
        self.range_digest = hashlib.sha256()
        self.range_hashed: Future[Any] | None = None  # the digest after its last acknowledged piece
        # pieces sent but not acknowledged yet are the new range's: hashed again into it
        for i, (offset, parts, _) in enumerate(self.in_flight):
            self.in_flight[i] = (offset, parts, self.hasher.submit(hashed, self.range_digest, parts))

    def _hash(self, offset: int, parts: Buffers) -> None:
        self.in_flight.append((offset, parts, self.hasher.submit(hashed, self.range_digest, parts)))

    def _stored(self, piece: Stored) -> None:
        self.range_first = self.range_first or piece.seq
        self.range_pieces += 1
        offset, _, self.range_hashed = self.in_flight.popleft()
        assert offset == piece.offset, (offset, piece.offset)  # acknowledged in the order sent
        self.session.offset = piece.offset + piece.size
        self.session.last_seq = piece.seq
        metrics.UPLOAD_BYTES.inc(piece.size)
        metrics.UPLOAD_PIECES.inc()
        now = time.monotonic()
        if self.view.room is not None and now - self.session.reported >= PROGRESS_EVERY \
                and self.session.offset < self.view.length:
            self.session.reported = now
            done = asyncio.ensure_future(announce(self.uploads.bucket.nc, self.session.current()))
            done.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved

    def claim_early(self) -> None:
        """Claim the write epoch while the body's first piece is still on its way."""
        if self.epoch:
            return
        self._claiming = asyncio.ensure_future(self.uploads.bucket.claim(self.view.id))
        self._claiming.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved

    async def _claim(self) -> PieceWriter:
        if not self.epoch:
            try:
                claiming = self._claiming or asyncio.ensure_future(self.uploads.bucket.claim(self.view.id))
                self.session.epoch = await claiming
            except StaleWriter:
                raise TusError(409, STALE) from None
            except PieceStoreError as exc:
                raise TusError(503, f"Storing failed: {exc}") from None
        writer = PieceWriter(self.uploads.bucket, self.view.id, self.epoch, self.window, on_stored=self._stored)
        await writer.__aenter__()
        self.writer = writer
        return writer

    async def store(self, piece: Buffers) -> None:
        view = self.view
        size = sum(map(len, piece))
        if self.offset == 0:
            try:
                sniff(view.mime, b"".join(piece), whole=size == view.length)
            except UploadRefused as exc:
                await ask(self.uploads, view.id, RejectUpload(reason=str(exc)))
                raise TusError(415, str(exc)) from None
        writer = self.writer or await self._claim()
        self._hash(self.offset, piece)
        try:
            await writer.put(self.offset, piece)
        except (StaleWriter, PieceStoreError) as exc:
            await self._refused(exc)
        self.offset += size
        if self.range_pieces >= RECORD_EVERY:
            await self.record(wait=False)

    async def next_piece(self, pieces: AsyncIterator[T]) -> T | None:
        """The body's next piece (None at its end); a refusal of a piece in flight while the
        body is slow to come ends the request at once (a stale writer hears 409 then)."""
        if self.writer is None:
            return await anext(pieces, None)
        following: asyncio.Future[T | None] = asyncio.ensure_future(anext(pieces, None))
        waits: set[asyncio.Future[Any]] = {following, self.writer.failure}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not following.done():
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
        failure = self.writer.failure
        if failure.done() and not failure.cancelled() and failure.exception() is not None:
            await self._refused(failure.exception())  # type: ignore[arg-type]
        return following.result()

    async def finish(self) -> UploadView:
        """Wait for the pieces in flight and record them: the whole chain of records when
        the upload is then whole (a message may attach it next), else only the one before
        (this one goes on its way while the client sends its next PATCH)."""
        if self.writer is not None:
            try:
                await self.writer.drain()
            except (StaleWriter, PieceStoreError) as exc:
                await self._refused(exc)
        view = await self.record(wait=self.session.offset == self.view.length)
        if view.room is not None and view.offset == view.length and self.range_offset > self.view.offset:
            await announce(self.uploads.bucket.nc, view)  # every byte is stored
        return view

    async def close(self) -> None:
        if self._claiming is not None and not self._claiming.done():
            self._claiming.cancel()
        if self.writer is not None:
            await self.writer.__aexit__(None, None, None)

    async def _refused(self, exc: Exception) -> None:
        await self.record(wait=True)  # what was acknowledged before the refusal is the file's
        if isinstance(exc, StaleWriter):
            view = await ask(self.uploads, self.view.id, GetUpload())
            if view.status in GONE_STATUSES:  # closed by its expiry or termination
                raise TusError(410, gone_reason(view)) from None
            raise TusError(409, STALE) from None
        raise TusError(507 if "maximum bytes" in str(exc) else 503, f"Storing failed: {exc}") from None

    async def record(self, wait: bool) -> UploadView:
        """Send the upload object what this request stored since its last record, after the
        record before it was answered (so at most one is on its way); with `wait`, until
        it is answered too. Raises the TusError of a record that failed."""
        session = self.session
        previous = session.recording
        if self.range_pieces:
            command = RecordRange(
                offset=self.range_offset, length=session.offset - self.range_offset,
                first_seq=self.range_first, last_seq=session.last_seq, sha256="0" * 64, epoch=self.epoch,
            )
            # hashed once the range's pieces are (the hasher's queue keeps the order)
            assert self.range_hashed is not None
            sha256 = asyncio.wrap_future(self.range_hashed)
            self._start_range()  # pieces acknowledged from now on are the next range's
            session.recording = asyncio.ensure_future(self._send_record(previous, command, sha256))
            session.recording.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        if wait and session.recording is not None:
            session.view = await session.recording
        elif previous is not None:
            session.view = await previous
        return session.current()

    async def _send_record(
        self, previous: asyncio.Future[UploadView] | None, command: RecordRange, sha256: asyncio.Future[Any]
    ) -> UploadView:
        if previous is not None:
            await previous
        command = command.model_copy(update={"sha256": (await sha256).hexdigest()})
        reply = await self.uploads.client.send(self.view.id, command)
        if isinstance(reply, UploadView):
            return reply
        if reply.code == ErrorCode.MISMATCH:
            # a HEAD or PATCH found some of our pieces first: record from the bucket
            view = await reconcile(self.uploads, await ask(self.uploads, self.view.id, GetUpload()))
            if view.offset < command.offset + command.length:  # a newer writer's view won
                raise TusError(409, STALE, tus_headers(view))
            return view
        raise TusError(STATUS_OF.get(reply.code, 503), reply.message)


async def pieces_of(
    chunks: AsyncIterator[bytes], limit: int, first: int = PIECE_SIZE
) -> AsyncIterator[tuple[Buffers, bool]]:
    """The body cut into pieces of PIECE_SIZE (the first of `first` bytes, the last maybe
    shorter), each as the chunks (or parts of chunks) it is made of, none copied; with whether
    the body went on past `limit` bytes (the piece is then cut at the limit)."""
    parts: list[bytes | memoryview] = []
    size = taken = 0
    target = first
    async for block in chunks:
        if not block:
            continue
        chunk: bytes | memoryview = block
        past = taken + len(chunk) > limit
        if past:
            chunk = memoryview(block)[: limit - taken]
        taken += len(chunk)
        while size + len(chunk) >= target:
            need = target - size
            if need == len(chunk):
                parts.append(chunk)
                chunk = b""
            else:
                view = memoryview(chunk)
                parts.append(view[:need])
                chunk = view[need:]
            yield tuple(parts), False
            parts, size, target = [], 0, PIECE_SIZE
        if chunk:
            parts.append(chunk)
            size += len(chunk)
        if past:
            yield tuple(parts), True
            return
    if parts:
        yield tuple(parts), False


T = TypeVar("T")
_END = object()


async def read_ahead(source: AsyncIterator[T], depth: int = READ_AHEAD) -> AsyncGenerator[T, None]:
    """`source`'s items, with up to `depth` of them read ahead while the consumer works: the
    body's next piece arrives while the last one is being stored (at most depth + 1 pieces
    are held)."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=depth)

    async def fill() -> None:
        try:
            async for item in source:
                await queue.put(item)
            await queue.put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            await queue.put(exc)

    task = asyncio.create_task(fill())
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def body_chunks(request: Request, cut: list[bool]) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        cut.append(True)


async def receive_body(request: Request, uploads: Uploads, session: WriteSession) -> UploadView:
    """Store the request's body at the session's offset (see the module docstring). The
    session is kept for the next PATCH unless this one failed or finished the upload."""
    view = session.current()
    remaining = view.length - view.offset
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise TusError(400, "Content-Length must be a number of bytes.")
        if int(declared) > remaining:
            raise TusError(413, f"The body ({declared} bytes) goes past Upload-Length: {remaining} bytes remain.")
    try:
        checksum = parse_checksum(request.headers.get("upload-checksum"))
    except UnsupportedChecksum as exc:
        raise TusError(400, str(exc)) from None
    session.busy = True
    receiver = Receiver(uploads, session)
    if checksum is None and remaining > 0 and declared != "0":
        receiver.claim_early()
    cut: list[bool] = []
    chunks: AsyncIterator[bytes] = body_chunks(request, cut)
    spool = None
    try:
        if checksum is not None:
            spool, chunks = await spooled(chunks, checksum, remaining, cut)
        too_long = False
        async with aclosing(read_ahead(pieces_of(chunks, remaining, first=FIRST_PIECE))) as pieces:
            while (item := await receiver.next_piece(pieces)) is not None:
                piece, past = item
                if piece:
                    await receiver.store(piece)
                too_long = too_long or past
        view = await receiver.finish()
    except BaseException:
        drop_session(uploads, session)
        raise
    finally:
        session.busy = False
        await receiver.close()
        if spool is not None:
            spool.close()
    if view.offset < view.length:
        keep_session(uploads, session)
    else:
        drop_session(uploads, session)
    if too_long:
        raise TusError(413, f"The body went past Upload-Length ({view.length}); bytes up to it were stored.", tus_headers(view))
    return view


async def spooled(
    chunks: AsyncIterator[bytes], checksum: tuple[str, bytes], limit: int, cut: list[bool]
) -> tuple[Any, AsyncIterator[bytes]]:
    """Read the whole body into a spool while hashing it; refuse it (nothing stored) if its
    digest is not the one given, or if the client went away before its end."""
    algorithm, expected = checksum
    digest = CHECKSUM_ALGORITHMS[algorithm]()
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            spool.close()
            raise TusError(413, f"The body goes past Upload-Length: {limit} bytes remain.")
        digest.update(chunk)
        spool.write(chunk)
    if cut:
        spool.close()
        raise TusError(400, "The body ended early; a checksummed body is stored whole or not at all.")
    if digest.digest() != expected:
        spool.close()
        raise TusError(460, f"Upload-Checksum mismatch: the body's {algorithm} differs; nothing was stored.")
    spool.seek(0)

    async def replay() -> AsyncIterator[bytes]:
        while block := spool.read(PIECE_SIZE):
            yield block

    return spool, replay()


# --- endpoints ------------------------------------------------------------------------------


def options_headers(uploads: Uploads) -> dict[str, str]:
    return {
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": TUS_EXTENSIONS,
        "Tus-Max-Size": str(uploads.rules.upload_max_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
        "Access-Control-Expose-Headers": "Location, Upload-Offset, Upload-Length, Upload-Expires, Tus-Resumable",
    }


@router.options("/api/uploads", include_in_schema=False)
@router.options("/api/uploads/{upload_id}", include_in_schema=False)
async def tus_options(request: Request) -> Response:
    return Response(status_code=204, headers=options_headers(await uploads_of(request)))


@router.post("/api/uploads", summary="tus creation (and creation-with-upload)")
async def create_upload(request: Request) -> Response:
    uploads = await uploads_of(request)
    try:
        check_version(request)
        owner = await request_identity(request, uploads)
        if "upload-defer-length" in request.headers:
            raise TusError(400, "Upload-Defer-Length is not supported: give Upload-Length.")
        raw_length = request.headers.get("upload-length")
        if raw_length is None or not raw_length.isdigit():
            raise TusError(400, "Upload-Length must be given as a number of bytes.")
        length = int(raw_length)
        if length > uploads.rules.upload_max_size:
            raise TusError(413, f"The file is larger than Tus-Max-Size ({uploads.rules.upload_max_size} bytes).")
        try:
            metadata = parse_metadata(request.headers.get("upload-metadata"))
        except UploadRefused as exc:
            raise TusError(400, str(exc)) from None
        declared_type = metadata.get("filetype") or metadata.get("type") or metadata.get("contentType", "")
        try:
            mime = check_type(declared_type)
        except UploadRefused as exc:
            raise TusError(415, str(exc)) from None
        room = metadata.get("room") or None
        if room is not None and len(room) > 64:
            raise TusError(400, "Upload-Metadata room: a room name or id has at most 64 characters.")
        body = int(request.headers.get("content-length") or "0") > 0 or "transfer-encoding" in request.headers
        if body and request.headers.get("content-type") != OFFSET_STREAM:
            raise TusError(415, f"A body sent with creation must be Content-Type: {OFFSET_STREAM}.")
        name = (metadata.get("filename") or metadata.get("name") or "")[:512]
        await charge_quota(uploads, quota_key(request, uploads, owner), length)
        upload_id = secrets.token_hex(32)
        view = await ask(uploads, upload_id, CreateUpload(
            owner=owner, room=room, length=length, mime=mime, name=name, metadata=metadata,
        ))
        location = {"Location": f"/api/uploads/{upload_id}"}
        if body:
            try:
                view = await receive_body(request, uploads, WriteSession.of(view))
            except TusError as exc:  # the upload exists: say where, with the refusal
                exc.headers.update(location)
                raise
        return Response(status_code=201, headers={**tus_headers(view), **location})
    except TusError as exc:
        return refusal(exc)


@router.get("/api/uploads", summary="the requesting user's uploads, newest first")
async def list_uploads(request: Request, limit: int = 50) -> Response:
    """Needs `Authorization: Bearer <token>`: a user finds their unfinished uploads (and
    their offsets: `received`) without a fingerprint kept by one browser."""
    uploads = await uploads_of(request)
    try:
        owner = await request_identity(request, uploads)
        if owner is None:
            raise TusError(403, "Listing uploads needs your identity: the session cookie (POST /api/session) or Authorization: Bearer <token>.")
        if not 1 <= limit <= 200:
            raise TusError(400, "limit must be 1-200.")
        try:
            conn = open_read_store(request.app.state.gateway.settings.read_db, readonly=True)
        except ReadStoreError as exc:
            raise TusError(503, f"The read store is not available: {exc}") from None
        try:
            rows = [dict(r) for r in queries.uploads_of(conn, owner, limit)]
        finally:
            conn.close()
    except TusError as exc:
        return refusal(exc)
    return JSONResponse({"uploads": rows})


@router.head("/api/uploads/{upload_id}", summary="tus: the upload's offset")
async def head_upload(upload_id: str, request: Request) -> Response:
    uploads = await uploads_of(request)
    try:
        check_version(request)
        await settle_session(uploads, upload_id)
        view = await reconcile(uploads, await opened(request, uploads, upload_id))
        headers = tus_headers(view, Upload_Length=view.length)
        if view.metadata:
            headers["Upload-Metadata"] = encode_metadata(view.metadata)
        return Response(status_code=200, headers=headers)
    except TusError as exc:
        return refusal(exc, body=False)


@router.patch("/api/uploads/{upload_id}", summary="tus: bytes at the upload's offset")
async def patch_upload(upload_id: str, request: Request) -> Response:
    uploads = await uploads_of(request)
    started = time.perf_counter()
    try:
        return await patch(upload_id, request, uploads)
    except TusError as exc:
        return refusal(exc)
    finally:
        metrics.UPLOAD_PATCH_SECONDS.observe(time.perf_counter() - started)


async def patch(upload_id: str, request: Request, uploads: Uploads) -> Response:
    check_version(request)
    if request.headers.get("content-type") != OFFSET_STREAM:
        raise TusError(415, f"PATCH needs Content-Type: {OFFSET_STREAM}.")
    raw_offset = request.headers.get("upload-offset")
    if raw_offset is None or not raw_offset.isdigit():
        raise TusError(400, "Upload-Offset must be given as a number of bytes.")
    session = session_of(uploads, upload_id)
    if session is not None and session.usable(int(raw_offset)):
        # this gateway wrote the upload up to here: go on in the same epoch, asking no one
        if not may_write(await request_identity(request, uploads), session.view):
            raise TusError(403, "This upload belongs to another user.")
    else:
        if session is not None and not session.busy:
            await session.settled()
            drop_session(uploads, session)
        view = await reconcile(uploads, await opened(request, uploads, upload_id))
        if int(raw_offset) != view.offset:
            raise TusError(409, f"Upload-Offset {raw_offset} is not the upload's offset {view.offset}.",
                           tus_headers(view))
        if view.status != "receiving":
            if int(request.headers.get("content-length") or "0"):
                raise TusError(413, "The upload is complete: it takes no more bytes.", tus_headers(view))
            return Response(status_code=204, headers=tus_headers(view))
        session = WriteSession.of(view)
    view = await receive_body(request, uploads, session)
    return Response(status_code=204, headers=tus_headers(view))


@router.delete("/api/uploads/{upload_id}", summary="tus termination")
async def delete_upload(upload_id: str, request: Request) -> Response:
    uploads = await uploads_of(request)
    try:
        check_version(request)
        await settle_session(uploads, upload_id)
        await opened(request, uploads, upload_id)
        uploads.sessions.pop(upload_id, None)
        await ask(uploads, upload_id, TerminateUpload())
        return Response(status_code=204, headers={"Tus-Resumable": TUS_VERSION})
    except TusError as exc:
        return refusal(exc)


@router.post("/api/uploads/{upload_id}", include_in_schema=False)
async def method_override(upload_id: str, request: Request) -> Response:
    """tus: X-HTTP-Method-Override for clients that cannot send PATCH or DELETE."""
    override = request.headers.get("x-http-method-override", "").upper()
    if override == "PATCH":
        return await patch_upload(upload_id, request)
    if override == "DELETE":
        return await delete_upload(upload_id, request)
    return refusal(TusError(405, "POST an upload URL only with X-HTTP-Method-Override: PATCH or DELETE."))


@router.get("/api/uploads/{upload_id}", summary="the bytes of a finished upload (Range supported)")
async def get_upload(upload_id: str, request: Request) -> Response:
    uploads = await uploads_of(request)
    try:
        view = await opened(request, uploads, upload_id, reading=True)
        if view.status not in READABLE_STATUSES:
            raise TusError(409, f"The upload is not finished: {view.offset} of {view.length} bytes.")
        start, end = byte_range(request.headers.get("range"), view.length)
    except TusError as exc:
        return refusal(exc)
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Length": str(end - start),
        "Cache-Control": "private, max-age=3600",
        "Content-Disposition": disposition(view),
        "X-Content-Type-Options": "nosniff",
    }
    if view.sha256:
        headers["ETag"] = f'"{view.sha256}"'
    status = 200
    if request.headers.get("range") is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{view.length}"
    return StreamingResponse(
        read_range(uploads, view, start, end), status_code=status, headers=headers, media_type=view.mime
    )


def disposition(view: UploadView) -> str:
    safe = "".join(c for c in view.name if c.isascii() and c.isprintable() and c not in '"\\;') or "file"
    inline = view.mime.startswith(("image/", "audio/", "video/")) or view.mime == "application/pdf"
    return f'{"inline" if inline else "attachment"}; filename="{safe}"'


def byte_range(header: str | None, length: int) -> tuple[int, int]:
    """[start, end) of a `Range: bytes=a-b` (one range; `a-`, `-n` too), else the whole."""
    if header is None:
        return 0, length
    unsatisfiable = TusError(416, f"Range {header!r} is not one satisfiable byte range of {length}.",
                             {"Content-Range": f"bytes */{length}"})
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise unsatisfiable
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            start, end = max(0, length - int(last)), length
        else:
            start = int(first)
            end = min(length, int(last) + 1) if last else length
    except ValueError:
        raise unsatisfiable from None
    if start >= end or start >= length:
        raise unsatisfiable
    return start, end


def read_range(uploads: Uploads, view: UploadView, start: int, end: int) -> AsyncIterator[bytes]:
    return read_bytes(uploads.bucket, view.id, view.ranges, start, end, view.epochs)


# --- attachments ------------------------------------------------------------------------------


async def attachable(gateway: Any, room: str, upload_ids: tuple[str, ...]) -> None:
    """Refuse (FrameError) attachments that are not finished uploads of this room, so a
    message never points at bytes its readers cannot get. `gateway` is the GatewayState."""
    client = UploadClient(gateway.nc, timeout=gateway.settings.request_timeout)
    for upload_id in upload_ids:
        reply = await client.send(upload_id, GetUpload())
        if isinstance(reply, ErrorReply):
            raise FrameError(f"Attachment {upload_id[:12]}…: {reply.message}")
        if reply.room != room:
            raise FrameError(f"Attachment {upload_id[:12]}… was not uploaded to this room.")
        if reply.status not in READABLE_STATUSES:
            raise FrameError(f"Attachment {reply.name or upload_id[:12]} is not finished uploading.")
