"""The upload kind: one object per upload id. Its commands record what the gateway stored;
its reactions finish a fully stored upload (read back, digest checked, object store meta
published) and purge the bytes of one that ended otherwise. Its alarm expires an upload
abandoned before it was finished."""

from __future__ import annotations

import hashlib
import logging
from contextlib import aclosing
from dataclasses import dataclass

from contracts.common import ErrorCode, ErrorReply
from contracts.upload import (
    READABLE_STATUSES,
    UPLOAD,
    CompleteUpload,
    CreateUpload,
    GeminiReport,
    GetUpload,
    HandOffBegin,
    HandOffFail,
    HandOffProgress,
    NeedGeminiCopy,
    RecordRange,
    RejectUpload,
    TerminateUpload,
    UploadClient,
    UploadCommand,
    UploadView,
)
from services.runtime.kind import Committed, DueAlarm, ObjectContext, ObjectKind, Outcome
from services.upload.checks import UploadRefused, check_type
from services.upload.domainmodel import (
    NoSuchUpload,
    OffsetMismatch,
    Upload,
    UploadExists,
    UploadGone,
)
from services.upload.gemini import GeminiFiles
from services.upload.handoff import hand_off, poll
from services.upload.store import PieceStoreError, UploadBucket

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadDeps:
    bucket: UploadBucket
    uploads: UploadClient  # the service's own client: a reaction's result goes back as a command
    max_size: int = 2 * 1024**3
    ttl: float = 86_400.0  # seconds an unfinished upload lives after its last accepted range
    gemini: GeminiFiles | None = None  # None: no API key, no hand-off
    poll_every: float = 1.0  # seconds between checks of a copy Gemini is processing
    max_polls: int = 300
    retries: int = 5  # attempts of one Files API call that may succeed when tried again
    backoff: float = 0.5  # seconds before the first retry; doubling


Ctx = ObjectContext[UploadDeps]


def wake_at(state: Upload) -> float | None:
    """The upload's alarm: its expiry while unfinished, the next poll of its Gemini copy."""
    times = [state.expires_at if state.status == "receiving" else None, state.gemini_poll_at]
    due = [t for t in times if t is not None]
    return min(due) if due else None


upload = ObjectKind[Upload, UploadDeps](
    UPLOAD,
    UploadCommand,
    describe="an upload",
    errors={
        UploadExists: ErrorCode.EXISTS,
        NoSuchUpload: ErrorCode.NOT_FOUND,
        UploadGone: ErrorCode.GONE,
        OffsetMismatch: ErrorCode.MISMATCH,
        UploadRefused: ErrorCode.BAD_REQUEST,
    },
    wake_at=wake_at,
)


def view(state: Upload) -> UploadView:
    # The ranges (what reading the file needs) are listed once it can be read: while it is
    # receiving, every PATCH's record and every HEAD is answered with a view, and one that
    # listed them grew with each PATCH (measured: +0.6 ms per PATCH per 1000 ranges).
    readable = state.status in READABLE_STATUSES
    return UploadView(
        id=state.upload_id,
        status=state.status,
        owner=state.owner,
        room=state.room,
        length=state.length,
        offset=state.offset,
        last_seq=state.last_seq,
        mime=state.mime,
        name=state.name,
        metadata=state.metadata,
        created_at=state.created_at,
        expires_at=state.expires_at,
        sha256=state.sha256,
        reason=state.reason,
        ranges=[(int(r[0]), int(r[2])) for r in state.ranges] if readable else [],
        epochs=[range_epoch(r) for r in state.ranges] if readable else [],
        epoch=state.epoch,
        gemini_state=state.gemini_state,
        gemini_generation=state.gemini_generation,
        gemini_file=state.gemini_file,
        gemini_upload_url=state.gemini_upload_url,
        gemini_received=state.gemini_received,
        gemini_uri=state.gemini_uri,
        gemini_expires_at=state.gemini_expires_at,
        gemini_reason=state.gemini_reason,
        gemini_started_at=getattr(state, "gemini_started_at", None),  # snapshots from before it
    )


def range_epoch(accepted: list) -> int:
    return int(accepted[5]) if len(accepted) > 5 else 0


def existing(state: Upload | None, ctx: Ctx) -> Upload:
    if state is None:
        raise NoSuchUpload(f"No upload {ctx.key}.")
    return state


@upload.handles(CreateUpload)
def create(command: CreateUpload, state: Upload | None, ctx: Ctx) -> Outcome:
    if state is not None:
        if state.command_id == str(command.command_id):
            return Outcome(state, view(state))  # a retried create
        raise UploadExists(f"Upload {ctx.key} exists.")
    mime = check_type(command.mime)
    if command.length > ctx.deps.max_size:
        raise UploadRefused(f"The file is larger than {ctx.deps.max_size} bytes.")
    now = ctx.now()
    state = Upload(
        upload_id=ctx.key,
        command_id=str(command.command_id),
        owner=command.owner,
        room=command.room,
        length=command.length,
        mime=mime,
        name=command.name,
        metadata=command.metadata,
        created_at=now,
        expires_at=now + ctx.deps.ttl,
    )
    return Outcome(state, view(state))


@upload.handles(GetUpload)
def get(command: GetUpload, state: Upload | None, ctx: Ctx) -> Outcome:
    return Outcome(state, view(existing(state, ctx)))


@upload.handles(RecordRange)
def record_range(command: RecordRange, state: Upload | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    state.accept_range(
        command.offset, command.length, command.first_seq, command.last_seq, command.sha256,
        now=ctx.now(), ttl=ctx.deps.ttl, epoch=command.epoch,
    )
    return Outcome(state, view(state))


@upload.handles(RejectUpload)
def reject(command: RejectUpload, state: Upload | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    state.reject(command.reason)
    return Outcome(state, view(state))


@upload.handles(CompleteUpload)
def complete(command: CompleteUpload, state: Upload | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    state.complete(command.sha256, command.chunks)
    return Outcome(state, view(state))


@upload.handles(TerminateUpload)
def terminate(command: TerminateUpload, state: Upload | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    state.terminate()
    return Outcome(state, view(state))


@upload.handles(DueAlarm)
def alarm_due(alarm: DueAlarm, state: Upload | None, ctx: Ctx) -> Outcome:
    if state is None:
        return Outcome(state, ErrorReply(code=ErrorCode.NOT_FOUND, message="No upload."))
    state.expire_if_due(alarm.at, ctx.now())
    state.poll_due(alarm.at, ctx.now())  # its reaction asks Gemini
    return Outcome(state, view(state))


@upload.handles(HandOffBegin)
def hand_off_begin(command: HandOffBegin, state: Upload | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    state.hand_off_started(command.file_id, command.upload_url, now=ctx.now())
    return Outcome(state, view(state))


@upload.handles(HandOffProgress)
def hand_off_progress(command: HandOffProgress, state: Upload | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    state.hand_off_progress(command.received)
    return Outcome(state, view(state))


@upload.handles(GeminiReport)
def gemini_report(command: GeminiReport, state: Upload | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    state.gemini_reported(
        command.file_id, command.state, command.uri, command.expires_at, command.reason,
        now=ctx.now(), poll_every=ctx.deps.poll_every, max_polls=ctx.deps.max_polls,
    )
    return Outcome(state, view(state))


@upload.handles(HandOffFail)
def hand_off_fail(command: HandOffFail, state: Upload | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    state.hand_off_failed(command.reason)
    return Outcome(state, view(state))


@upload.handles(NeedGeminiCopy)
def need_gemini_copy(command: NeedGeminiCopy, state: Upload | None, ctx: Ctx) -> Outcome:
    state = existing(state, ctx)
    if ctx.deps.gemini is not None:
        state.need_gemini_copy(ctx.now(), lost=command.lost)  # its reaction hands it off again
    return Outcome(state, view(state))


# --- reactions: outside the mailbox, so they may send the object commands ---------------------


ENDINGS = {"Rejected", "Expired", "Deleted"}  # event class names


@upload.after_commit
async def react(committed: Committed, state: Upload | None, ctx: Ctx) -> None:
    """A fully stored upload is finished; one that ended otherwise loses its bytes. Both
    are idempotent: a reload says the last commit again."""
    if state is None:
        return
    names = {type(e).__name__ for e in committed.events}
    if state.status == "stored" and names & {"Created", "RangeAccepted"}:
        ctx.spawn(finish(ctx, state.upload_id, state.length, state.mime, state.name,
                         [list(r) for r in state.ranges]), f"finish upload {ctx.key}")
    elif state.status == "complete" and ctx.deps.gemini is not None:
        # Once finished, the file goes to Gemini; a new copy when one is needed again; a
        # hand-off cut short by a crash resumes (a reload says its last commit again).
        resumed = committed.command is None and state.gemini_state == "uploading"
        if resumed or (names & {"Completed", "GeminiCopyLost"} and state.gemini_state is None):
            ctx.spawn(hand_off(ctx, state.upload_id), f"hand off upload {ctx.key}")
        elif "GeminiPollDue" in names:
            ctx.spawn(poll(ctx, state.upload_id), f"poll gemini copy {ctx.key}")
    elif state.gone and names & ENDINGS:
        ctx.spawn(purge(ctx, state.upload_id, with_meta=bool(state.sha256)), f"purge upload {ctx.key}")


async def finish(
    ctx: Ctx, upload_id: str, length: int, mime: str, name: str, ranges: list[list]
) -> None:
    """Close the upload's fence (no writer adds a piece after it), read every piece back:
    each accepted range must be the contiguous pieces of its epoch within its sequences,
    its digest the one accepted; delete every other piece (a stale writer's), then publish
    the object store meta and record the whole file's sha256."""
    bucket = ctx.deps.bucket
    whole = hashlib.sha256()
    chunks = 0
    index = 0
    position = 0
    part = hashlib.sha256()
    others: list[int] = []
    reason: str | None = None
    try:
        await bucket.close(upload_id)
        async with aclosing(bucket.pieces(upload_id)) as pieces:
            async for piece in pieces:
                accepted = ranges[index] if index < len(ranges) else None
                if (
                    accepted is None
                    or not int(accepted[2]) <= piece.seq <= int(accepted[3])
                    or piece.epoch != range_epoch(accepted)
                    or piece.offset != position
                    or piece.end > int(accepted[0]) + int(accepted[1])
                ):
                    others.append(piece.seq)  # not the file's: never accepted
                    continue
                whole.update(piece.data)
                part.update(piece.data)
                position = piece.end
                chunks += 1
                if position == int(accepted[0]) + int(accepted[1]):
                    if part.hexdigest() != accepted[4]:
                        reason = f"the bytes of range {index} differ from what was accepted"
                        break
                    part = hashlib.sha256()
                    index += 1
        if reason is None and position != length:
            reason = f"only {position} of {length} bytes are stored"
        if reason is not None:
            log.error("upload %s cannot be finished: %s", upload_id, reason)
            await ctx.deps.uploads.send(upload_id, RejectUpload(reason=f"Stored bytes are damaged: {reason}."))
            return
        if others:
            log.info("upload %s: deleting %d pieces a stale writer stored", upload_id, len(others))
            await bucket.delete(others)
        digest = whole.digest()
        await bucket.publish_meta(
            upload_id, length, chunks, digest, {"Content-Type": mime, "Filename": name}
        )
    except PieceStoreError as exc:
        log.warning("finishing upload %s failed (%s); the next load tries again", upload_id, exc)
        return
    reply = await ctx.deps.uploads.send(upload_id, CompleteUpload(sha256=digest.hex(), chunks=chunks))
    if isinstance(reply, ErrorReply):
        log.warning("recording upload %s as complete failed: %s", upload_id, reply.message)


async def purge(ctx: Ctx, upload_id: str, with_meta: bool) -> None:
    try:
        await ctx.deps.bucket.purge(upload_id, with_meta)
    except Exception:
        log.exception("purging the bytes of upload %s failed", upload_id)
