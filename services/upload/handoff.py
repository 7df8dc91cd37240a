"""Handing a finished upload to the Gemini Files API, exactly once.

Run by the upload kind's reactions (outside its mailbox; every step is recorded by a command
to the upload object, so the object's events say how far it got):

1. `files.get` of the derived file id first (`dc-<upload id>-<generation>`): a copy made by
   an earlier run that died after finishing is found, not made again;
2. a session recorded before (`HandOffStarted`) is resumed: `query` says how many bytes
   Gemini holds, and the upload continues there; otherwise a new session is opened and its
   URL recorded before any byte is sent;
3. 8 MiB chunks read from our own store; a failed chunk (cut, 429, 5xx, no status header) is
   followed by `query` and a retry from what Gemini holds, with backoff;
4. the last chunk's answer (PROCESSING, usually) is reported, its sha256 checked against
   ours; the object's alarm then polls until ACTIVE or FAILED (`poll`), no task sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from contextlib import aclosing
from datetime import datetime
from typing import Any

from contracts.common import Command, ErrorReply
from contracts.upload import (
    GeminiReport,
    GetUpload,
    HandOffBegin,
    HandOffFail,
    HandOffProgress,
    UploadView,
)
from services.runtime import metrics
from services.runtime.kind import ObjectContext
from services.upload.gemini import CHUNK, GeminiError, GeminiFile, SessionGone, gemini_file_id
from services.upload.store import read_bytes

log = logging.getLogger(__name__)


def expiry(file: GeminiFile) -> float | None:
    if not file.expiration_time:
        return None
    try:
        return datetime.fromisoformat(file.expiration_time).timestamp()
    except ValueError:
        return None


async def _tell(ctx: ObjectContext[Any], command: Command) -> UploadView | None:
    reply = await ctx.deps.uploads.send(ctx.key, command)
    if isinstance(reply, ErrorReply):
        log.warning("upload %s refused %s: %s", ctx.key, type(command).__name__, reply.message)
        return None
    if isinstance(command, HandOffFail):
        metrics.UPLOAD_HANDOFFS.labels(outcome="failed").inc()
    return reply


async def _report(ctx: ObjectContext[Any], view: UploadView, file_id: str, file: GeminiFile) -> None:
    if file.sha256 and view.sha256:
        theirs = base64.b64decode(file.sha256).hex()
        if theirs != view.sha256:
            await _tell(ctx, HandOffFail(reason=f"Gemini's copy differs (sha256 {theirs[:12]}…, ours {view.sha256[:12]}…)."))
            return
    state = file.state if file.state in ("PROCESSING", "ACTIVE", "FAILED") else "PROCESSING"
    after = await _tell(ctx, GeminiReport(file_id=file_id, state=state, uri=file.uri, expires_at=expiry(file),
                                          reason=file.error))
    if after is not None and after.gemini_state != view.gemini_state and after.gemini_state in ("ACTIVE", "FAILED"):
        metrics.UPLOAD_HANDOFFS.labels(outcome=after.gemini_state.lower()).inc()
        if after.gemini_state == "ACTIVE" and after.gemini_started_at is not None:
            metrics.UPLOAD_SECONDS_TO_ACTIVE.observe(max(0.0, ctx.now() - after.gemini_started_at))


async def _retrying(ctx: ObjectContext[Any], call: Any) -> Any:
    """`call()` again after a retryable GeminiError, with backoff, up to `retries` times."""
    delay = ctx.deps.backoff
    for attempt in range(ctx.deps.retries):
        try:
            return await call()
        except GeminiError as exc:
            if not exc.retryable or attempt == ctx.deps.retries - 1:
                raise
            log.info("upload %s: %s; again in %.1f s", ctx.key, exc, delay)
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


async def hand_off(ctx: ObjectContext[Any], upload_id: str) -> None:
    view = await _tell(ctx, GetUpload())
    if view is None or view.status != "complete":
        return
    file_id = gemini_file_id(upload_id, view.gemini_generation)
    try:
        await _hand_off(ctx, view, file_id)
    except GeminiError as exc:
        log.warning("handing upload %s to Gemini failed: %s", upload_id, exc)
        await _tell(ctx, HandOffFail(reason=str(exc)[:500]))


async def _hand_off(ctx: ObjectContext[Any], view: UploadView, file_id: str) -> None:
    gemini = ctx.deps.gemini
    found = await _retrying(ctx, lambda: gemini.get(file_id))
    if found is not None:  # made before (we died after its last chunk): not made again
        await _report(ctx, view, file_id, found)
        return
    url = view.gemini_upload_url if view.gemini_file == file_id else None
    offset = 0
    if url is not None:
        try:
            status, offset = await _retrying(ctx, lambda: gemini.query(url))
        except SessionGone:
            url = None
        else:
            if status == "final":
                if (found := await gemini.get(file_id)) is not None:
                    await _report(ctx, view, file_id, found)
                    return
                url = None
    if url is None:
        url = await _retrying(ctx, lambda: gemini.start(file_id, view.name, view.mime, view.length))
        if await _tell(ctx, HandOffBegin(file_id=file_id, upload_url=url)) is None:
            return
        offset = 0
    attempts = 0
    delay = ctx.deps.backoff
    while True:
        size = min(CHUNK, view.length - offset)
        final = offset + size == view.length
        chunk = await _read(ctx, view, offset, offset + size)
        try:
            file = await gemini.upload(url, offset, chunk, final)
        except GeminiError as exc:
            attempts += 1
            if not exc.retryable or attempts >= ctx.deps.retries:
                raise
            log.info("upload %s: chunk at %d: %s; asking the session, again in %.1f s", view.id, offset, exc, delay)
            await asyncio.sleep(delay)
            delay *= 2
            status, offset = await _retrying(ctx, lambda: gemini.query(url))
            if status == "final":
                if (found := await gemini.get(file_id)) is None:
                    raise GeminiError("the session is final but Gemini has no file", retryable=False) from exc
                await _report(ctx, view, file_id, found)
                return
            continue
        attempts, delay = 0, ctx.deps.backoff
        offset += size
        if final:
            assert file is not None
            await _report(ctx, view, file_id, file)
            return
        await _tell(ctx, HandOffProgress(received=offset))


async def _read(ctx: ObjectContext[Any], view: UploadView, start: int, end: int) -> bytes:
    parts = []
    async with aclosing(read_bytes(ctx.deps.bucket, view.id, view.ranges, start, end, view.epochs)) as data:
        async for part in data:
            parts.append(part)
    chunk = b"".join(parts)
    if len(chunk) != end - start:
        raise GeminiError(f"our store gave {len(chunk)} of {end - start} bytes at {start}", retryable=False)
    return chunk


async def poll(ctx: ObjectContext[Any], upload_id: str) -> None:
    """The alarm said: ask Gemini how its copy stands."""
    view = await _tell(ctx, GetUpload())
    if view is None or view.gemini_state != "PROCESSING" or view.gemini_file is None:
        return
    try:
        found = await _retrying(ctx, lambda: ctx.deps.gemini.get(view.gemini_file))
    except GeminiError as exc:
        log.warning("polling Gemini for upload %s failed: %s", upload_id, exc)
        found = GeminiFile(view.gemini_file, "PROCESSING", view.gemini_uri or "", view.mime, None, None, None)
    if found is None:
        await _tell(ctx, HandOffFail(reason="Gemini has no copy of the file any more."))
        return
    await _report(ctx, view, view.gemini_file, found)
