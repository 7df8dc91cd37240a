"""The ratelimit service's command handlers: which object a key is, decide, say what to reply.

`ip:<address>` keys are `Limiter`s, in memory only (`durable` says False: the host neither
reads nor writes a stream for them); `user:<id>` keys are `Quota` aggregates, stored as events.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel

from contracts.common import ErrorCode, ErrorReply
from contracts.ratelimit import (
    RATELIMIT,
    GetQuota,
    QuotaUsage,
    RateDecision,
    TakeToken,
    ratelimit_command,
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

IP_PREFIX = "ip:"
USER_PREFIX = "user:"

State = Limiter | Quota


def bad_request(message: str) -> ErrorReply:
    return ErrorReply(code=ErrorCode.BAD_REQUEST, message=message)


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


class RateLimitBehaviour:
    """How the ratelimit service hosts per-IP limiters and per-user quotas."""

    kind = RATELIMIT
    aggregate_type = Quota

    def __init__(
        self,
        interval: float = 5.0,
        grace: float = 20.0,
        limits: QuotaLimits | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval = interval
        self.grace = grace
        self.limits = limits or QuotaLimits()
        self.monotonic = monotonic  # the limiter's clock: its state never leaves the process
        self.clock = clock  # the quotas' clock: epoch seconds, for the UTC day and month

    def parse(self, data: bytes):
        return ratelimit_command.validate_json(data)

    def durable(self, key: str) -> bool:
        """Only quotas are stored; limiters (and keys that are neither) live in memory."""
        return key.startswith(USER_PREFIX)

    def decide(self, key: str, state: State | None, command) -> tuple[State | None, BaseModel]:
        if key.startswith(IP_PREFIX):
            if not isinstance(command, TakeToken):
                return state, bad_request(
                    f"{key!r} is a per-IP limiter: it takes only 'take', not {command.type!r}."
                )
            if key == IP_PREFIX:
                return state, bad_request("An ip: key needs an address after 'ip:'.")
            limiter = state if isinstance(state, Limiter) else Limiter(self.interval, self.grace)
            taken = limiter.take(self.monotonic())
            return limiter, RateDecision(allowed=taken.allowed, cooldown=taken.cooldown)
        if key.startswith(USER_PREFIX):
            if isinstance(command, TakeToken):
                return state, bad_request(
                    f"{key!r} is a user's AI quota: it takes 'charge' and 'quota', not 'take'."
                )
            if key == USER_PREFIX:
                return state, bad_request("A user: key needs a user id after 'user:'.")
            quota = state if isinstance(state, Quota) else None
            today = utc_day(self.clock())
            if isinstance(command, GetQuota):
                usage = quota.usage(today) if quota is not None else Usage(day=today)
                reason = usage.refusal(self.limits)
                return quota, usage_reply(Charge(reason is None, reason, usage))
            quota, outcome = charge(
                quota, key, str(command.command_id), today, command.requests, command.tokens,
                self.limits,
            )
            return quota, usage_reply(outcome)
        return state, bad_request(
            f"Unknown ratelimit key {key!r}: use 'ip:<address>' or 'user:<id>'."
        )

    def broadcast(self, event) -> BaseModel | None:
        return None  # nobody watches limits

    def alarm_time(self, state: State) -> float | None:
        return None

    def on_alarm(self, key: str, state: State | None, at: float) -> tuple[State | None, BaseModel]:
        # Nothing here sets an alarm, so none is ever due; answer a stray one with a
        # non-error reply so that the alarm runner acknowledges it instead of retrying.
        return state, RateDecision(allowed=True, cooldown=0)
