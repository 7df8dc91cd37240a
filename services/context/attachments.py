"""The files a question came with: its attachments (upload ids) looked up in the upload
service, put on the question's turn for the provider (as `fileData` parts for Gemini once a
file has a Gemini copy; named in the text otherwise)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from nats.aio.client import Client as NATS

from contracts.common import ErrorReply
from contracts.context import Ask
from contracts.upload import READABLE_STATUSES, GetUpload, NeedGeminiCopy, UploadClient, UploadView
from services.context.provider import FileRef
from services.context.window import Window

log = logging.getLogger(__name__)


async def attached_files(
    nc: NATS, ask: Ask, timeout: float, gemini: bool = False, wait: float = 20.0, need: bool = True
) -> tuple[FileRef, ...]:
    """The question's attachments that are finished uploads of its room. With `gemini`, each
    with its Gemini copy's URI: a copy is asked for if there is none usable (expired, say;
    not with `need` False: asked for already), and awaited up to `wait` seconds in all; a
    file without one is only named."""
    client = UploadClient(nc, timeout=timeout)
    views = []
    for upload_id in ask.attachments:
        view = await client.send(upload_id, NeedGeminiCopy() if gemini and need else GetUpload())
        if isinstance(view, ErrorReply) or view.status not in READABLE_STATUSES or view.room != ask.room:
            log.warning("reply %s: attachment %s is not usable: %s", ask.reply_id, upload_id, view)
            continue
        views.append(view)
    if gemini:
        views = await _copies(client, views, wait)
    return tuple(
        FileRef(name=v.name, mime=v.mime, size=v.length,
                uri=v.gemini_uri if gemini and v.gemini_state == "ACTIVE" else None, upload_id=v.id)
        for v in views
    )


async def copies_lost(nc: NATS, files: tuple[FileRef, ...], timeout: float) -> None:
    """Gemini said it has no copy of `files` any more: each is handed to it again from our
    store (the next `attached_files` waits for the new copies)."""
    client = UploadClient(nc, timeout=timeout)
    for file in files:
        reply = await client.send(file.upload_id, NeedGeminiCopy(lost=True))
        if isinstance(reply, ErrorReply):
            log.warning("upload %s: a new Gemini copy was not asked for: %s", file.upload_id, reply.message)


async def _copies(client: UploadClient, views: list[UploadView], wait: float) -> list[UploadView]:
    """The views again once every Gemini copy is ACTIVE or FAILED, or `wait` has passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    pause = 0.1
    while any(v.gemini_state in (None, "uploading", "PROCESSING") for v in views):
        if loop.time() + pause > deadline:
            break
        await asyncio.sleep(pause)  # a bounded wait inside one reply, for another service
        pause = min(pause * 2, 1.0)
        fresh = []
        for v in views:
            got = await client.send(v.id, GetUpload())
            fresh.append(got if isinstance(got, UploadView) else v)
        views = fresh
    return views


def with_files(window: Window, files: tuple[FileRef, ...]) -> Window:
    """The window with `files` on its last turn (the question's), named in its text too."""
    if not files:
        return window
    last = window.turns[-1]
    names = "; ".join(f.described() for f in files)
    # before the question's own line, which stays the last ("<asker> asks: ...")
    head, newline, question = last.text.rpartition("\n")
    text = f"{head}{newline}(attached: {names})\n{question}"
    turn = dataclasses.replace(last, text=text, files=files)
    return dataclasses.replace(window, turns=[*window.turns[:-1], turn])
