"""The ratelimit service's two kinds: per-IP limiters (memory only) and per-user AI quotas
(stored as events)."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.ratelimit import (
    LIMITER,
    QUOTA,
    ChargeFrame,
    ChargeQuota,
    ChargeUploadBytes,
    GetQuota,
    LimiterCommand,
    QuotaCommand,
    QuotaUsage,
    RateDecision,
    TakeToken,
    UploadBytesUsage,
)
from services.ratelimit.domainmodel import (
    Charge,
    Limiter,
    Quota,
    QuotaLimits,
    Usage,
    charge,
    charge_upload_bytes,
    utc_day,
)
from services.runtime import metrics
from services.runtime.kind import ObjectContext, ObjectKind, Outcome


@dataclass(frozen=True)
class RateLimitDeps:
    """The rule of the limiters and the limits of the quotas."""

    interval: float = 5.0
    grace: float = 20.0
    limits: QuotaLimits = field(default_factory=QuotaLimits)


Ctx = ObjectContext[RateLimitDeps]

limiter = ObjectKind[Limiter, RateLimitDeps](
    LIMITER, LimiterCommand, describe="a per-IP limiter", durable=False
)
quota = ObjectKind[Quota, RateLimitDeps](QUOTA, QuotaCommand, describe="a user's AI quota")


@limiter.handles(TakeToken)
def take(command: TakeToken, state: Limiter | None, ctx: Ctx) -> Outcome:
    # The limiter's clock is monotonic: its state never leaves the process.
    state = state or Limiter(ctx.deps.interval, ctx.deps.grace)
    taken = state.take(ctx.clock.monotonic())
    return Outcome(state, RateDecision(allowed=taken.allowed, cooldown=taken.cooldown))


@limiter.handles(ChargeFrame)
def charge_frame(command: ChargeFrame, state: Limiter | None, ctx: Ctx) -> Outcome:
    state = state or Limiter(ctx.deps.interval, ctx.deps.grace)
    cooldown = state.charge(ctx.clock.monotonic())
    return Outcome(state, RateDecision(allowed=cooldown == 0, cooldown=cooldown))


def usage_reply(outcome: Charge) -> QuotaUsage:
    usage: Usage = outcome.usage
    return QuotaUsage(
        allowed=outcome.allowed,
        reason=outcome.reason,
        day=usage.day,
        month=usage.month,
        day_requests=usage.day_requests,
        day_tokens=usage.day_tokens,
        month_requests=usage.month_requests,
        month_tokens=usage.month_tokens,
    )


@quota.handles(GetQuota)
def get_quota(command: GetQuota, state: Quota | None, ctx: Ctx) -> Outcome:
    today = utc_day(ctx.now())
    usage = state.usage(today) if state is not None else Usage(day=today)
    reason = usage.refusal(ctx.deps.limits)
    return Outcome(state, usage_reply(Charge(reason is None, reason, usage)))


@quota.handles(ChargeQuota)
def charge_quota(command: ChargeQuota, state: Quota | None, ctx: Ctx) -> Outcome:
    state, outcome = charge(
        state, ctx.key, str(command.command_id), utc_day(ctx.now()), command.requests,
        command.tokens, ctx.deps.limits,
    )
    if command.requests and not outcome.allowed and outcome.reason:
        metrics.QUOTA_REFUSALS.labels(
            "month" if outcome.reason.startswith("Monthly") else "day",
            "tokens" if "token" in outcome.reason else "requests",
        ).inc()
    return Outcome(state, usage_reply(outcome))


@quota.handles(ChargeUploadBytes)
def charge_upload(command: ChargeUploadBytes, state: Quota | None, ctx: Ctx) -> Outcome:
    limit = ctx.deps.limits.daily_upload_bytes
    state, outcome = charge_upload_bytes(
        state, ctx.key, str(command.command_id), utc_day(ctx.now()), command.bytes, limit
    )
    return Outcome(
        state,
        UploadBytesUsage(
            allowed=outcome.allowed, reason=outcome.reason, day=outcome.day,
            day_bytes=outcome.day_bytes, daily_limit=limit,
        ),
    )
