"""The upload object kind: one object per upload (its key the upload id, 256 random bits),
its commands, replies and client; and where an upload's bytes live.

Bytes are not commands. They go, piece by piece, straight into the JetStream object store
bucket `uploads` in its own layout (ADR-20): pieces on `$O.uploads.C.<upload id>`, each
carrying the writer's epoch and guarded by it (`Nats-Expected-Last-Subject-Sequence` on the
upload's fence subject: a writer fenced by a newer claim stores nothing more), and a
`Nats-Msg-Id` (a retried publish is stored once). The upload object records which ranges
(pieces first..last of one epoch) it has accepted; once every byte is there it deletes what
else is on the subject and publishes the object's meta, so the finished file is an ordinary
object any NATS client reads (`nats object get uploads <upload id>`).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from contracts.client import ObjectClient
from contracts.common import Command, Contract, ErrorReply
from contracts.keys import subject_token

UPLOAD = "upload"
BUCKET = "uploads"
# One stored piece is one NATS message: under the server's max_payload (1 MB in
# infra/nats/nats.conf) with room for its headers.
PIECE_SIZE = 1_040_384  # 1016 KiB
UPLOAD_ID = re.compile(r"^[0-9a-f]{64}$")
MAX_METADATA = 4096  # bytes of a decoded Upload-Metadata, all pairs together

UploadId = Annotated[str, Field(pattern=UPLOAD_ID.pattern)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
UploadStatus = Literal["receiving", "stored", "complete", "rejected", "expired", "deleted"]
GONE_STATUSES = ("rejected", "expired", "deleted")
READABLE_STATUSES = ("stored", "complete")  # every byte stored: the file can be read


def is_upload_id(text: str) -> bool:
    return bool(UPLOAD_ID.match(text))


def object_stream(bucket: str = BUCKET) -> str:
    """The stream of an object store bucket (as every NATS client names it)."""
    return f"OBJ_{bucket}"


def chunk_subject(upload_id: str, bucket: str = BUCKET) -> str:
    """Where the pieces of an upload are stored: the object's chunk subject (its nuid is the
    upload id)."""
    return f"$O.{bucket}.C.{upload_id}"


def fence_subject(upload_id: str, bucket: str = BUCKET) -> str:
    """The upload's write fence: each message a writer's claim (its sequence the writer's
    epoch), the last one "closed" once the upload takes no more bytes. No object's nuid
    is ever `<upload id>.w`, so no object store client reads it as chunks."""
    return f"$O.{bucket}.C.{upload_id}.w"


def progress_subject(room: str) -> str:
    """Where the gateway storing an upload's bytes says how far it got, for the sockets of
    the upload's room (core NATS, not persisted: `UploadProgress`)."""
    return f"out.{UPLOAD}.{subject_token(room)}"


class UploadProgress(Contract):
    """An upload of a room on its way: sent at most every few hundred ms while its bytes
    are stored, and once they all are (`status` "stored")."""

    type: Literal["upload_progress"] = "upload_progress"
    id: UploadId
    room: str
    name: str
    mime: str
    received: int = Field(ge=0)
    total: int = Field(ge=0)
    status: Literal["receiving", "stored"]


# --- commands: gateway -> cmd.upload.<upload id> ------------------------------------------------


class CreateUpload(Command):
    """Open a new upload of `length` bytes. The gateway has checked type and size already;
    the object checks again and records the owner, so later requests can be judged."""

    type: Literal["create"] = "create"
    owner: str | None = Field(None, max_length=128, description="verified user id, or None: anonymous")
    room: str | None = Field(None, max_length=64)
    length: int = Field(ge=0)
    mime: str = Field(min_length=1, max_length=128)
    name: str = Field("", max_length=512)
    metadata: dict[str, str] = Field(default_factory=dict, description="Upload-Metadata, decoded")


class GetUpload(Command):
    """Read the upload's state; appends nothing."""

    type: Literal["get"] = "get"


class RecordRange(Command):
    """Bytes [offset, offset+length) are stored as the pieces of write epoch `epoch` among
    sequences first_seq..last_seq (others there, a stale writer's, are not the file's).

    A range already recorded is answered as it stands (a retry, or a stale writer's late
    report of pieces a newer request already found); one that does not start at the
    upload's offset, or comes from an epoch older than the last accepted one, is refused."""

    type: Literal["range"] = "range"
    offset: int = Field(ge=0)
    length: int = Field(ge=1)
    first_seq: int = Field(ge=1)
    last_seq: int = Field(ge=1)
    sha256: Sha256Hex
    epoch: int = Field(0, ge=0, description="the writer's epoch (0: pieces written before epochs)")


class RejectUpload(Command):
    """The upload's bytes broke a rule (e.g. its first bytes are not of its declared type):
    it takes no more bytes and its stored pieces are purged."""

    type: Literal["reject"] = "reject"
    reason: str = Field(min_length=1, max_length=500)


class CompleteUpload(Command):
    """Sent by the upload service itself: every byte was read back, the ranges' digests
    checked, and the object store meta published."""

    type: Literal["complete"] = "complete"
    sha256: Sha256Hex
    chunks: int = Field(ge=0)


class TerminateUpload(Command):
    """tus termination: the upload is deleted, its bytes purged."""

    type: Literal["terminate"] = "terminate"


# --- the Gemini Files API copy (sent by the upload service's hand-off, and by askers) ------

GeminiFileId = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")]
GeminiState = Literal["PROCESSING", "ACTIVE", "FAILED"]


class HandOffBegin(Command):
    """A resumable upload session to Gemini was opened: recorded before any byte is sent,
    so a hand-off that dies resumes this session (`query`) instead of opening another."""

    type: Literal["handoff_begin"] = "handoff_begin"
    file_id: GeminiFileId
    upload_url: str = Field(min_length=1, max_length=2048)


class HandOffProgress(Command):
    type: Literal["handoff_progress"] = "handoff_progress"
    received: int = Field(ge=0)


class GeminiReport(Command):
    """What Gemini says of the copy: after its last chunk, a files.get, or a poll."""

    type: Literal["gemini_report"] = "gemini_report"
    file_id: GeminiFileId
    state: GeminiState
    uri: str = Field("", max_length=2048)
    expires_at: float | None = None
    reason: str | None = Field(None, max_length=500)


class HandOffFail(Command):
    type: Literal["handoff_fail"] = "handoff_fail"
    reason: str = Field(min_length=1, max_length=500)


class NeedGeminiCopy(Command):
    """A question needs the file in Gemini: start a new copy unless a usable one exists or
    is on its way (Gemini keeps files 48 h)."""

    type: Literal["need_gemini"] = "need_gemini"
    lost: bool = Field(False, description="Gemini answered that it has no such file (403)")


UploadCommand = Annotated[
    CreateUpload | GetUpload | RecordRange | RejectUpload | CompleteUpload | TerminateUpload
    | HandOffBegin | HandOffProgress | GeminiReport | HandOffFail | NeedGeminiCopy,
    Field(discriminator="type"),
]


# --- replies ------------------------------------------------------------------------------


class UploadView(Contract):
    type: Literal["upload"] = "upload"
    id: str
    status: UploadStatus
    owner: str | None
    room: str | None
    length: int
    offset: int = Field(description="bytes accepted so far: the tus Upload-Offset")
    last_seq: int = Field(description="stream sequence of the last accepted piece (0: none)")
    mime: str
    name: str
    metadata: dict[str, str]
    created_at: float
    expires_at: float | None = Field(None, description="when an unfinished upload is purged")
    sha256: str | None = Field(None, description="of the whole file, once complete")
    reason: str | None = Field(None, description="why it was rejected")
    ranges: list[tuple[int, int]] = Field(
        default_factory=list,
        description="(offset, first piece sequence) of each accepted range, listed once the file "
        "can be read (stored, complete): empty while receiving, so a view stays the same size "
        "however many PATCHes an upload takes",
    )
    epochs: list[int] = Field(default_factory=list, description="the write epoch of each listed range")
    epoch: int = Field(0, description="the write epoch of the last accepted range")
    gemini_state: Literal["uploading", "PROCESSING", "ACTIVE", "FAILED"] | None = None
    gemini_generation: int = 0
    gemini_file: str | None = Field(None, description="the Gemini file id (files/<id>)")
    gemini_upload_url: str | None = None
    gemini_received: int = 0
    gemini_uri: str | None = None
    gemini_expires_at: float | None = None
    gemini_reason: str | None = None
    gemini_started_at: float | None = Field(None, description="when the hand-off of this copy began")


UploadReply = Annotated[UploadView | ErrorReply, Field(discriminator="type")]
upload_reply = TypeAdapter(UploadReply)


class UploadClient(ObjectClient[UploadReply]):
    """Sends commands to uploads (`cmd.upload.<upload id>`)."""

    kind = UPLOAD
    replies = upload_reply
