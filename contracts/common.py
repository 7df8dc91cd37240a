"""Messages every object kind shares: the error reply and the command envelope."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Contract(BaseModel):
    """Base of every bus message: strict about unknown keys, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Command(Contract):
    command_id: UUID = Field(
        default_factory=uuid4,
        description="Chosen by the sender; a retry carries the same id and is applied once.",
    )


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    NOT_MEMBER = "not_member"
    TOO_LONG = "too_long"
    OVERLOADED = "overloaded"
    CONFLICT = "conflict"
    EXISTS = "exists"
    UNAVAILABLE = "unavailable"
    MISMATCH = "mismatch"  # e.g. an upload's range does not start at its offset
    GONE = "gone"  # e.g. an upload deleted, expired or rejected
    INTERNAL = "internal"  # the object failed on this command; sending it again fails again


class ErrorReply(Contract):
    """An object refused a command; `message` says why in words a user can read."""

    type: Literal["error"] = Field("error", description="the reply's kind: a refusal", examples=['error'])
    code: ErrorCode = Field(description='a stable word for the kind of refusal', examples=['too_long'])
    message: str = Field(examples=["Message too long."], description='why, in words a user can read')

    @property
    def retryable(self) -> bool:
        return self.code in (ErrorCode.OVERLOADED, ErrorCode.CONFLICT, ErrorCode.UNAVAILABLE)


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each field that was wrong and why."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
