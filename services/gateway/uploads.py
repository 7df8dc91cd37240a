"""`/api/uploads`: the tus 1.0 resumable upload protocol (core, creation,
creation-with-upload, expiration, checksum, termination), and GET of a finished file.

The gateway holds the request body and writes it, piece by piece as it arrives, into the
object store bucket (services/upload/store.py); it never holds more than a piece (about
1 MiB) of it, except that a PATCH with `Upload-Checksum` is spooled (to disk past 8 MiB)
until its digest is checked, so a refused body stores nothing. The upload object
(services/upload) is told which ranges are stored and decides everything else; there are
no locks: a second writer from a stale view is refused at its next piece by the chain's
expected-sequence guard (409), and pieces a dead request stored without reporting them are
found and recorded by the next HEAD or PATCH.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from contracts.common import Command, ErrorCode, ErrorReply
from contracts.ratelimit import ChargeUploadBytes, QuotaClient, UploadBytesUsage
from contracts.upload import (
    GONE_STATUSES,
    PIECE_SIZE,
    CreateUpload,
    GetUpload,
    RecordRange,
    RejectUpload,
    TerminateUpload,
    UploadClient,
    UploadView,
    is_upload_id,
)
from services.gateway.identity import SESSION_COOKIE, Identities, InvalidToken, KeysUnavailable
from services.gateway.protocol import FrameError
from services.gateway.ratelimit import client_address
from services.readstore import queries
from services.readstore.store import ReadStoreError, open_read_store
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
from services.upload.store import PieceStoreError, StaleWriter, UploadBucket, read_bytes

log = logging.getLogger(__name__)

router = APIRouter()

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,expiration,checksum,termination"
OFFSET_STREAM = "application/offset+octet-stream"
RECORD_EVERY = 8  # pieces per recorded range: ~8 MiB per command to the upload object
READ_AHEAD = 2  # pieces of a body read while the one before is being stored
SPOOL_IN_MEMORY = 8 * 1024 * 1024  # a checksummed body beyond this is spooled to disk


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


def refusal(exc: TusError) -> Response:
    headers = {"Tus-Resumable": TUS_VERSION, **exc.headers}
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
        raise TusError(410, gone_reason(view))
    return view


def gone_reason(view: UploadView) -> str:
    if view.status == "rejected":
        return f"The upload was rejected: {view.reason}"
    return f"The upload was {view.status}."


# --- the pieces of a body -------------------------------------------------------------------


async def reconcile(uploads: Uploads, view: UploadView, attempts: int = 3) -> UploadView:
    """Record pieces stored after the upload's last accepted one (a request that died
    between storing and reporting them, or one still running): the chain holds the truth."""
    for _ in range(attempts):
        if view.status != "receiving":
            return view
        last = await uploads.bucket.last_piece(view.id)
        if last is None or last.seq == view.last_seq:
            return view
        digest = hashlib.sha256()
        first = end_seq = 0
        position = view.offset
        async with aclosing(uploads.bucket.pieces(view.id, after_seq=view.last_seq)) as pieces:
            async for piece in pieces:
                if piece.offset != position or piece.end > view.length:
                    log.error("upload %s: piece %d at %d breaks the chain at %d", view.id, piece.seq, piece.offset, position)
                    break
                digest.update(piece.data)
                first = first or piece.seq
                end_seq = piece.seq
                position = piece.end
        if not end_seq:
            return view
        command = RecordRange(
            offset=view.offset, length=position - view.offset, first_seq=first, last_seq=end_seq,
            sha256=digest.hexdigest(),
        )
        reply = await uploads.client.send(view.id, command)
        if isinstance(reply, UploadView):
            view = reply
        elif reply.code == ErrorCode.MISMATCH:  # someone recorded meanwhile: look again
            view = await ask(uploads, view.id, GetUpload())
        else:
            raise TusError(STATUS_OF.get(reply.code, 503), reply.message)
    return view


class Receiver:
    """Stores one request body into an upload from `view.offset` on, a piece at a time, and
    records what it stored every RECORD_EVERY pieces and at the end."""

    def __init__(self, uploads: Uploads, view: UploadView) -> None:
        self.uploads = uploads
        self.view = view
        self.writer = secrets.token_hex(6)
        self.offset = view.offset
        self.last_seq = view.last_seq
        self._start_range()

    def _start_range(self) -> None:
        self.range_offset = self.offset
        self.range_first = 0
        self.range_pieces = 0
        self.range_digest = hashlib.sha256()

    async def store(self, piece: bytes) -> None:
        view = self.view
        if self.offset == 0:
            try:
                sniff(view.mime, piece, whole=len(piece) == view.length)
            except UploadRefused as exc:
                await ask(self.uploads, view.id, RejectUpload(reason=str(exc)))
                raise TusError(415, str(exc)) from None
        try:
            seq = await self.uploads.bucket.put_piece(view.id, self.offset, piece, self.last_seq, self.writer)
        except StaleWriter:
            await self.record()
            raise TusError(
                409, "Another request wrote to this upload meanwhile; HEAD it for the offset and resume."
            ) from None
        except PieceStoreError as exc:
            await self.record()
            raise TusError(507 if "maximum bytes" in str(exc) else 503, f"Storing failed: {exc}") from None
        self.range_first = self.range_first or seq
        self.range_pieces += 1
        self.range_digest.update(piece)
        self.offset += len(piece)
        self.last_seq = seq
        if self.range_pieces >= RECORD_EVERY:
            await self.record()

    async def record(self) -> UploadView:
        """Tell the upload object what this request stored since its last report."""
        if self.range_pieces:
            command = RecordRange(
                offset=self.range_offset, length=self.offset - self.range_offset,
                first_seq=self.range_first, last_seq=self.last_seq,
                sha256=self.range_digest.hexdigest(),
            )
            self._start_range()
            reply = await self.uploads.client.send(self.view.id, command)
            if isinstance(reply, UploadView):
                self.view = reply
            elif reply.code == ErrorCode.MISMATCH:
                # a HEAD or PATCH found some of our pieces first: record from the chain
                self.view = await reconcile(self.uploads, await ask(self.uploads, self.view.id, GetUpload()))
            else:
                raise TusError(STATUS_OF.get(reply.code, 503), reply.message)
        return self.view


async def pieces_of(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[tuple[bytes, bool]]:
    """The body cut into pieces of PIECE_SIZE (the last may be shorter), with whether the
    body went on past `limit` bytes (the piece is then cut at the limit)."""
    buffer = bytearray()
    taken = 0
    async for chunk in chunks:
        if not chunk:
            continue
        if taken + len(chunk) > limit:
            buffer += chunk[: limit - taken]
            while len(buffer) >= PIECE_SIZE:
                yield bytes(buffer[:PIECE_SIZE]), False
                del buffer[:PIECE_SIZE]
            yield bytes(buffer), True
            return
        taken += len(chunk)
        buffer += chunk
        while len(buffer) >= PIECE_SIZE:
            yield bytes(buffer[:PIECE_SIZE]), False
            del buffer[:PIECE_SIZE]
    if buffer:
        yield bytes(buffer), False


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


async def receive_body(request: Request, uploads: Uploads, view: UploadView) -> UploadView:
    """Store the request's body at the upload's offset (see the module docstring)."""
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
    receiver = Receiver(uploads, view)
    cut: list[bool] = []
    chunks: AsyncIterator[bytes] = body_chunks(request, cut)
    spool = None
    try:
        if checksum is not None:
            spool, chunks = await spooled(chunks, checksum, remaining, cut)
        too_long = False
        async with aclosing(read_ahead(pieces_of(chunks, remaining))) as pieces:
            async for piece, past in pieces:
                if piece:
                    await receiver.store(piece)
                too_long = too_long or past
        view = await receiver.record()
    finally:
        if spool is not None:
            spool.close()
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
                view = await receive_body(request, uploads, view)
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
        view = await reconcile(uploads, await opened(request, uploads, upload_id))
        headers = tus_headers(view, Upload_Length=view.length)
        if view.metadata:
            headers["Upload-Metadata"] = encode_metadata(view.metadata)
        return Response(status_code=200, headers=headers)
    except TusError as exc:
        return Response(status_code=exc.status, headers={"Tus-Resumable": TUS_VERSION, **exc.headers})


@router.patch("/api/uploads/{upload_id}", summary="tus: bytes at the upload's offset")
async def patch_upload(upload_id: str, request: Request) -> Response:
    uploads = await uploads_of(request)
    try:
        return await patch(upload_id, request, uploads)
    except TusError as exc:
        return refusal(exc)


async def patch(upload_id: str, request: Request, uploads: Uploads) -> Response:
    check_version(request)
    if request.headers.get("content-type") != OFFSET_STREAM:
        raise TusError(415, f"PATCH needs Content-Type: {OFFSET_STREAM}.")
    raw_offset = request.headers.get("upload-offset")
    if raw_offset is None or not raw_offset.isdigit():
        raise TusError(400, "Upload-Offset must be given as a number of bytes.")
    view = await reconcile(uploads, await opened(request, uploads, upload_id))
    if int(raw_offset) != view.offset:
        raise TusError(409, f"Upload-Offset {raw_offset} is not the upload's offset {view.offset}.",
                       tus_headers(view))
    if view.status != "receiving":
        if int(request.headers.get("content-length") or "0"):
            raise TusError(413, "The upload is complete: it takes no more bytes.", tus_headers(view))
        return Response(status_code=204, headers=tus_headers(view))
    view = await receive_body(request, uploads, view)
    return Response(status_code=204, headers=tus_headers(view))


@router.delete("/api/uploads/{upload_id}", summary="tus termination")
async def delete_upload(upload_id: str, request: Request) -> Response:
    uploads = await uploads_of(request)
    try:
        check_version(request)
        await opened(request, uploads, upload_id)
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
        if view.status not in ("stored", "complete"):
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
    return read_bytes(uploads.bucket, view.id, view.ranges, start, end)


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
        if reply.status not in ("stored", "complete"):
            raise FrameError(f"Attachment {reply.name or upload_id[:12]} is not finished uploading.")
