"""The ratelimit objects. Pure domain: no NATS, no I/O, no clock of their own.

- `Limiter`: the chat demo's per-IP limiter, in memory only (no events; an evicted limiter is
  forgotten, as the demo's is).
- `Quota`: a user's AI quotas for the current UTC day and month, an eventsourcing aggregate
  rebuilt from its `Charged` events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

QUOTA_NAMESPACE = uuid5(NAMESPACE_URL, "durachat:quota")
RECENT_IDS = 1024  # charge command ids remembered to apply a retried charge once


# --- per-IP limiter --------------------------------------------------------------------------


@dataclass(frozen=True)
class Take:
    """What a take decided: allowed, or refused for `cooldown` more seconds."""

    allowed: bool
    cooldown: float


class Limiter:
    """The chat demo's `RateLimiter`: each frame pushes `next_allowed` to
    max(now, next_allowed) + interval, and passes if that leaves no cooldown, i.e. if the
    pushed time is at most `grace` ahead of now. A refused frame pushes nothing (the demo's
    client does not call the limiter while it is in cooldown), so trying never lengthens the
    wait; its cooldown is how long until a frame would pass.

    With interval 5 and grace 20, from rest at one instant: frames 1-3 pass with time to
    spare (next_allowed - now = 5, 10, 15), the 4th passes exactly at the limit (20 - 20 = 0),
    the 5th is refused with a cooldown of 5 s (25 - 20). After that, one frame per 5 s.
    (The demo itself lets a 5th through: its client lets a frame pass and asks the limiter
    afterwards; the gateway's local fallback uses this same rule, so the two agree.)

    Kept in memory only: it is no eventsourcing aggregate (its kind is not durable).
    """

    def __init__(self, interval: float, grace: float) -> None:
        self.interval = interval
        self.grace = grace
        self.next_allowed = 0.0

    def charge(self, now: float) -> float:
        """The demo's `RateLimiter.fetch` with POST, exactly: push `next_allowed` to
        max(now, next_allowed) + interval, always, and return the cooldown that leaves,
        max(0, next_allowed - now - grace). The demo's client (the gateway's `DemoGate`)
        has already let the frame through; it lets no other through until this cooldown
        has passed. From rest: 0, 0, 0, 0, then 5 s on the fifth charge."""
        self.next_allowed = max(now, self.next_allowed) + self.interval
        return max(0.0, self.next_allowed - now - self.grace)

    def take(self, now: float) -> Take:
        pushed = max(now, self.next_allowed) + self.interval
        cooldown = max(0.0, pushed - now - self.grace)
        if cooldown > 0:
            return Take(allowed=False, cooldown=cooldown)
        self.next_allowed = pushed
        return Take(allowed=True, cooldown=0.0)


# --- per-user AI quotas ----------------------------------------------------------------------


@dataclass(frozen=True)
class QuotaLimits:
    daily_requests: int = 200
    daily_tokens: int = 200_000
    monthly_requests: int = 3000
    monthly_tokens: int = 3_000_000
    daily_upload_bytes: int = 10 * 1024**3


@dataclass(frozen=True)
class Usage:
    """A user's usage in one UTC day and the month it belongs to."""

    day: str  # YYYY-MM-DD
    day_requests: int = 0
    day_tokens: int = 0
    month_requests: int = 0
    month_tokens: int = 0

    @property
    def month(self) -> str:  # YYYY-MM
        return self.day[:7]

    def refusal(self, limits: QuotaLimits) -> str | None:
        """Why one more request may not go now, or None if it may.

        The month is checked first: when both quotas are reached, waiting for tomorrow does
        not help. A token quota reached (or passed: a request's tokens are charged after it
        ran) refuses new requests too.
        """
        if self.month_requests >= limits.monthly_requests:
            return "Monthly AI request quota reached."
        if self.month_tokens >= limits.monthly_tokens:
            return "Monthly AI token quota reached."
        if self.day_requests >= limits.daily_requests:
            return "Daily AI request quota reached."
        if self.day_tokens >= limits.daily_tokens:
            return "Daily AI token quota reached."
        return None


def utc_day(now: float) -> str:
    """The UTC day (YYYY-MM-DD) of epoch time `now`."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def quota_id(user_key: str) -> UUID:
    """The aggregate id of a user's quota object: the same on every replica."""
    return uuid5(QUOTA_NAMESPACE, user_key)


@dataclass(frozen=True)
class Charge:
    """What a charge decided: whether it was applied (or had been, for a retry) and the usage."""

    allowed: bool
    reason: str | None
    usage: Usage


class Quota(Aggregate):
    """One user's AI usage: counters of the current UTC day and month, nothing older."""

    @staticmethod
    def create_id(user_key: str) -> UUID:
        return quota_id(user_key)

    @event("Created")
    def __init__(self, user_key: str) -> None:
        self.user_key = user_key
        self.day = ""  # the day the day counters are of ("": none yet)
        self.day_requests = 0
        self.day_tokens = 0
        self.month = ""
        self.month_requests = 0
        self.month_tokens = 0
        self.recent_ids: dict[str, str] = {}  # charge command id -> day, oldest first

    def period(self, today: str) -> str:
        """The day a command at `today` counts in: never before a day already counted (a
        replica whose clock is behind must not reopen a past day)."""
        return max(today, self.day)

    def usage(self, today: str) -> Usage:
        """Usage as of `today`: a new day (or month) starts from 0. Changes nothing."""
        day = self.period(today)
        month = day[:7]
        return Usage(
            day=day,
            day_requests=self.day_requests if day == self.day else 0,
            day_tokens=self.day_tokens if day == self.day else 0,
            month_requests=self.month_requests if month == self.month else 0,
            month_tokens=self.month_tokens if month == self.month else 0,
        )

    def upload_bytes_on(self, day: str) -> int:
        # getattr: quotas snapshotted before uploads existed have no upload counters
        return getattr(self, "upload_bytes", 0) if getattr(self, "upload_day", "") == day else 0

    def charge_upload(self, command_id: str, today: str, size: int) -> None:
        self._upload_bytes_charged(command_id=command_id, day=self.period(today), size=size)

    @event("UploadBytesCharged")
    def _upload_bytes_charged(self, command_id: str, day: str, size: int) -> None:
        self.upload_bytes = self.upload_bytes_on(day) + size
        self.upload_day = day
        self.recent_ids[command_id] = day
        if len(self.recent_ids) > RECENT_IDS:
            del self.recent_ids[next(iter(self.recent_ids))]

    def applied(self, command_id: str) -> bool:
        return command_id in self.recent_ids

    def charge(self, command_id: str, today: str, requests: int, tokens: int) -> Usage:
        """Record `requests` and `tokens` (the caller has checked the limits)."""
        day = self.period(today)
        self._charged(command_id=command_id, day=day, month=day[:7], requests=requests, tokens=tokens)
        return self.usage(day)

    @event("Charged")
    def _charged(self, command_id: str, day: str, month: str, requests: int, tokens: int) -> None:
        if day != self.day:
            self.day, self.day_requests, self.day_tokens = day, 0, 0
        if month != self.month:
            self.month, self.month_requests, self.month_tokens = month, 0, 0
        self.day_requests += requests
        self.day_tokens += tokens
        self.month_requests += requests
        self.month_tokens += tokens
        self.recent_ids[command_id] = day
        if len(self.recent_ids) > RECENT_IDS:
            del self.recent_ids[next(iter(self.recent_ids))]


@dataclass(frozen=True)
class UploadCharge:
    allowed: bool
    reason: str | None
    day: str
    day_bytes: int


def charge_upload_bytes(
    quota: Quota | None, user_key: str, command_id: str, today: str, size: int, limit: int
) -> tuple[Quota | None, UploadCharge]:
    """Count `size` upload bytes in the user's day, unless that passes the daily `limit`
    (then nothing is recorded). A retried charge is answered as applied."""
    if quota is not None and quota.applied(command_id):
        day = quota.period(today)
        return quota, UploadCharge(True, None, day, quota.upload_bytes_on(day))
    day = quota.period(today) if quota is not None else today
    used = quota.upload_bytes_on(day) if quota is not None else 0
    if used + size > limit:
        reason = (
            f"Daily upload quota reached: {used} of {limit} bytes used today; "
            f"this file needs {size}."
        )
        return quota, UploadCharge(False, reason, day, used)
    quota = quota if quota is not None else Quota(user_key)
    quota.charge_upload(command_id, day, size)
    return quota, UploadCharge(True, None, day, quota.upload_bytes_on(day))


def charge(
    quota: Quota | None,
    user_key: str,
    command_id: str,
    today: str,
    requests: int,
    tokens: int,
    limits: QuotaLimits,
) -> tuple[Quota | None, Charge]:
    """Apply one ChargeQuota to `quota` (None: the user has no usage yet).

    - A retry of a charge already applied changes nothing and is answered as applied.
    - A request (requests=1) is refused, and nothing recorded, when the month's or the day's
      request or token quota is reached; otherwise it is recorded with its tokens.
    - Tokens alone (requests=0) were already spent: always recorded.
    `allowed` says whether this charge's request went (for requests=0: whether a request may
    go now), and `reason` why not.
    """
    if quota is not None and quota.applied(command_id):
        usage = quota.usage(today)
        reason = None if requests else usage.refusal(limits)
        return quota, Charge(allowed=reason is None, reason=reason, usage=usage)
    usage = quota.usage(today) if quota is not None else Usage(day=today)
    if requests:
        reason = usage.refusal(limits)
        if reason is not None:
            return quota, Charge(allowed=False, reason=reason, usage=usage)
    if requests or tokens:
        quota = quota if quota is not None else Quota(user_key)
        usage = quota.charge(command_id, today, requests, tokens)
    reason = None if requests else usage.refusal(limits)
    return quota, Charge(allowed=reason is None, reason=reason, usage=usage)
