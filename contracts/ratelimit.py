"""The ratelimit service's two object kinds: their commands, replies and clients.

- `limiter`, keyed by client address: the chat demo's per-IP limiter, in memory only, as the
  demo keeps it;
- `quota`, keyed by user id: a user's AI quotas (daily and monthly, requests and tokens),
  durable as events.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from contracts.client import ObjectClient
from contracts.common import Command, Contract, ErrorReply

LIMITER = "limiter"
QUOTA = "quota"
RATE_LIMITED = "Your IP is being rate-limited, please try again later."


# --- per-IP limiter -------------------------------------------------------------------------


class TakeToken(Command):
    """One frame from this IP: push its next allowed time on, and say whether it may pass.
    (Asked before the frame passes; kept for gateways from before `ChargeFrame`.)"""

    type: Literal["take"] = "take"


class ChargeFrame(Command):
    """A frame from this IP was let through (the demo's POST to its RateLimiter): push its next
    allowed time on, always, and answer the cooldown that leaves. The gateway's local gate
    decides the frame before asking; this only tells it how long to refuse afterwards."""

    type: Literal["charge_frame"] = "charge_frame"


class RateDecision(Contract):
    type: Literal["rate"] = "rate"
    allowed: bool
    cooldown: float = Field(
        ge=0, description="seconds until the IP may send again (0 when allowed)"
    )


# --- per-user AI quotas ---------------------------------------------------------------------


class ChargeQuota(Command):
    """Count an AI request (and the tokens it used) against the user's quotas, if they allow it.

    With `tokens` 0 it checks and counts the request; the tokens a reply used are charged
    afterwards with `requests` 0.
    """

    type: Literal["charge"] = "charge"
    requests: int = Field(1, ge=0, le=1)
    tokens: int = Field(0, ge=0, le=10_000_000)


class GetQuota(Command):
    type: Literal["quota"] = "quota"


class QuotaUsage(Contract):
    """A user's usage in the current UTC day and month, and whether a request may go now."""

    type: Literal["usage"] = "usage"
    allowed: bool
    reason: str | None = Field(None, examples=["Daily AI request quota reached."])
    day: str = Field(examples=["2026-11-27"])
    month: str = Field(examples=["2026-11"])
    day_requests: int
    day_tokens: int
    month_requests: int
    month_tokens: int


class ChargeUploadBytes(Command):
    """Count an upload's declared bytes against the user's daily upload quota, if it allows
    them (checked before any byte is stored; nothing is given back for an abandoned upload)."""

    type: Literal["upload_bytes"] = "upload_bytes"
    bytes: int = Field(ge=0, le=1 << 50)


class UploadBytesUsage(Contract):
    type: Literal["upload_usage"] = "upload_usage"
    allowed: bool
    reason: str | None = Field(None, examples=["Daily upload quota reached."])
    day: str
    day_bytes: int = Field(description="bytes charged in the UTC day, this charge included if allowed")
    daily_limit: int


LimiterCommand = Annotated[TakeToken | ChargeFrame, Field(discriminator="type")]
LimiterReply = Annotated[RateDecision | ErrorReply, Field(discriminator="type")]
limiter_reply = TypeAdapter(LimiterReply)

QuotaCommand = Annotated[ChargeQuota | GetQuota | ChargeUploadBytes, Field(discriminator="type")]
QuotaReply = Annotated[QuotaUsage | UploadBytesUsage | ErrorReply, Field(discriminator="type")]
quota_reply = TypeAdapter(QuotaReply)


class LimiterClient(ObjectClient[LimiterReply]):
    """Sends commands to per-IP limiters (`cmd.limiter.<address>`)."""

    kind = LIMITER
    replies = limiter_reply


class QuotaClient(ObjectClient[QuotaReply]):
    """Sends commands to users' AI quotas (`cmd.quota.<user id>`)."""

    kind = QUOTA
    replies = quota_reply
