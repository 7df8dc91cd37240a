"""The ratelimit service's two kinds: per-IP limiters (memory only) and per-user AI quotas
(stored as events)."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.ratelimit import (
    LIMITER,
    QUOTA,
    ChargeQuota,
    GetQuota,
    LimiterCommand,
    QuotaCommand,
    QuotaUsage,
    RateDecision,
    TakeToken,
)
from services.ratelimit.domainmodel import (
    Charge,
    Limiter,
    Quota,
    QuotaLimits,
    Usage,
    charge,
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
