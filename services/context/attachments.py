"""The files a question came with: its attachments (upload ids) looked up in the upload
service, put on the question's turn for the provider (as `fileData` parts for Gemini once a
file has a Gemini copy; named in the text otherwise)."""

from __future__ import annotations

import dataclasses
import logging

from nats.aio.client import Client as NATS

from contracts.common import ErrorReply
from contracts.context import Ask
from contracts.upload import GetUpload, UploadClient
from services.context.provider import FileRef
from services.context.window import Window

log = logging.getLogger(__name__)


async def attached_files(nc: NATS, ask: Ask, timeout: float) -> tuple[FileRef, ...]:
    """The question's attachments that are finished uploads of its room."""
    client = UploadClient(nc, timeout=timeout)
    files = []
    for upload_id in ask.attachments:
        view = await client.send(upload_id, GetUpload())
        if isinstance(view, ErrorReply) or view.status not in ("stored", "complete") or view.room != ask.room:
            log.warning("reply %s: attachment %s is not usable: %s", ask.reply_id, upload_id, view)
            continue
        files.append(FileRef(name=view.name, mime=view.mime, size=view.length))
    return tuple(files)


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
