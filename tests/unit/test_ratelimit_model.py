"""The ratelimit objects on their own: the per-IP limiter against a schedule computed by hand,
and the per-user AI quotas (limits, day and month rollover, retries, rebuilding from events)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from eventsourcing.domain import Snapshot

from contracts.ratelimit import (
    ChargeQuota,
    GetQuota,
    QuotaUsage,
    RateDecision,
    TakeToken,
)
from services.ratelimit.domainmodel import (
    RECENT_IDS,
    Limiter,
    Quota,
    QuotaLimits,
    Usage,
    charge,
    quota_id,
    utc_day,
)
from services.ratelimit.handlers import RateLimitDeps, limiter, quota
from services.ratelimit.main import RateLimitSettings
from services.runtime.kind import BadCommand, ObjectKind
from tests.support import ManualClocks


def replay(events):
    quota = None
    for e in events:
        quota = e.mutate(quota)
    return quota


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# --- the per-IP limiter ---------------------------------------------------------------------


def takes(limiter: Limiter, now: float, n: int = 1) -> list[tuple[bool, float]]:
    return [(t.allowed, t.cooldown) for t in (limiter.take(now) for _ in range(n))]


def test_a_burst_of_four_then_one_every_five_seconds():
    limiter = Limiter(interval=5, grace=20)
    # At one instant each take pushes next_allowed to now + 5, 10, 15, 20: the cooldown
    # (pushed - now - grace) is -15, -10, -5 (time to spare) and 0 for the 4th (exactly at
    # the limit: allowed). The 5th would push it to 25: 5 s of cooldown, refused.
    assert takes(limiter, 0.0, 4) == [(True, 0.0)] * 4
    assert limiter.next_allowed == 20
    assert takes(limiter, 0.0) == [(False, 5.0)]
    # A refused take pushes nothing: it does not lengthen the cooldown.
    assert takes(limiter, 0.0, 3) == [(False, 5.0)] * 3
    assert limiter.next_allowed == 20
    assert takes(limiter, 2.0) == [(False, 3.0)]
    # At t=5 the cooldown is over: one passes, the next 5 s later.
    assert takes(limiter, 5.0) == [(True, 0.0)]
    assert limiter.next_allowed == 25
    (allowed, cooldown), = takes(limiter, 5.1)
    assert not allowed and cooldown == pytest.approx(4.9)
    (allowed, cooldown), = takes(limiter, 9.9)
    assert not allowed and cooldown == pytest.approx(0.1)
    assert takes(limiter, 10.0) == [(True, 0.0)]
    assert takes(limiter, 15.0) == [(True, 0.0)]
    assert limiter.next_allowed == 35


def test_the_limit_recovers_with_time():
    limiter = Limiter(interval=5, grace=20)
    takes(limiter, 100.0, 4)  # next_allowed 120
    # Idle for 20 s: next_allowed is no longer ahead, the full burst is back.
    assert takes(limiter, 120.0, 5) == [(True, 0.0)] * 4 + [(False, 5.0)]
    # Half-way: 12.5 s after a burst at 0 (next_allowed 20), two pass (cooldowns -7.5, -2.5)
    # and a third would be 2.5 s early.
    limiter = Limiter(interval=5, grace=20)
    takes(limiter, 0.0, 4)
    assert takes(limiter, 12.5, 3) == [(True, 0.0), (True, 0.0), (False, 2.5)]


# --- the quota rules --------------------------------------------------------------------------

LIMITS = QuotaLimits(daily_requests=3, daily_tokens=100, monthly_requests=5, monthly_tokens=1000)
KEY = "u1"


def run_charge(quota, day, requests=1, tokens=0, command_id=None, limits=LIMITS):
    return charge(quota, KEY, command_id or str(uuid.uuid4()), day, requests, tokens, limits)


def test_requests_are_counted_until_the_daily_quota():
    quota = None
    for n in (1, 2, 3):
        quota, outcome = run_charge(quota, "2026-11-27", tokens=10)
        assert outcome.allowed and outcome.reason is None
        assert outcome.usage == Usage("2026-11-27", n, 10 * n, n, 10 * n)
    quota, outcome = run_charge(quota, "2026-11-27")
    assert not outcome.allowed and outcome.reason == "Daily AI request quota reached."
    assert outcome.usage.day_requests == 3  # a refusal records nothing
    events = quota.collect_events()
    assert [type(e).__name__ for e in events] == ["Created", "Charged", "Charged", "Charged"]
    assert events[1].day == "2026-11-27" and events[1].month == "2026-11"


def test_tokens_are_always_charged_and_then_refuse_requests():
    quota, _ = run_charge(None, "2026-11-27")
    # Tokens alone were already spent: recorded even past the quota.
    quota, outcome = run_charge(quota, "2026-11-27", requests=0, tokens=99)
    assert outcome.allowed and outcome.usage.day_tokens == 99
    quota, outcome = run_charge(quota, "2026-11-27", requests=0, tokens=50)
    assert outcome.usage.day_tokens == 149 and outcome.usage.month_tokens == 149
    assert not outcome.allowed and outcome.reason == "Daily AI token quota reached."
    # A new request is refused while the tokens are over.
    quota, outcome = run_charge(quota, "2026-11-27")
    assert not outcome.allowed and outcome.reason == "Daily AI token quota reached."
    assert outcome.usage.day_requests == 1
    # Exactly at the token quota refuses too.
    quota, _ = run_charge(None, "2026-11-27", requests=0, tokens=100)
    assert run_charge(quota, "2026-11-27")[1].reason == "Daily AI token quota reached."


def test_nothing_is_created_by_a_refusal_or_an_empty_charge():
    zero = QuotaLimits(daily_requests=0)
    quota, outcome = run_charge(None, "2026-11-27", limits=zero)
    assert quota is None and not outcome.allowed
    assert outcome.reason == "Daily AI request quota reached."
    quota, outcome = run_charge(None, "2026-11-27", requests=0, tokens=0)
    assert quota is None and outcome.allowed and outcome.usage == Usage("2026-11-27")


def test_a_new_day_starts_from_zero_and_the_month_keeps_counting():
    quota = None
    for _ in range(3):
        quota, _ = run_charge(quota, "2026-11-27", tokens=1)
    assert run_charge(quota, "2026-11-27")[1].reason == "Daily AI request quota reached."
    # Seen the next day, without recording anything, usage of the day is 0.
    assert quota.usage("2026-11-28") == Usage("2026-11-28", 0, 0, 3, 3)
    assert (quota.day, quota.day_requests) == ("2026-11-27", 3)
    quota, outcome = run_charge(quota, "2026-11-28", tokens=1)
    assert outcome.allowed and outcome.usage == Usage("2026-11-28", 1, 1, 4, 4)
    quota, outcome = run_charge(quota, "2026-11-28")
    assert outcome.allowed and outcome.usage.month_requests == 5
    # Five this month: the monthly quota is reached though the day has room.
    quota, outcome = run_charge(quota, "2026-11-28")
    assert not outcome.allowed and outcome.reason == "Monthly AI request quota reached."
    # A new month starts from zero too (and so does its first day).
    quota, outcome = run_charge(quota, "2026-12-01", tokens=7)
    assert outcome.allowed and outcome.usage == Usage("2026-12-01", 1, 7, 1, 7)
    assert outcome.usage.month == "2026-12"


def test_the_month_is_named_first_when_both_quotas_are_reached():
    limits = QuotaLimits(daily_requests=2, monthly_requests=2)
    quota, _ = run_charge(None, "2026-11-27", limits=limits)
    quota, _ = run_charge(quota, "2026-11-27", limits=limits)
    assert run_charge(quota, "2026-11-27", limits=limits)[1].reason == (
        "Monthly AI request quota reached."
    )
    limits = QuotaLimits(daily_tokens=10, monthly_tokens=10)
    quota, _ = run_charge(None, "2026-11-27", requests=0, tokens=10, limits=limits)
    assert run_charge(quota, "2026-11-27", limits=limits)[1].reason == (
        "Monthly AI token quota reached."
    )


def test_a_clock_behind_does_not_reopen_a_past_day():
    quota, _ = run_charge(None, "2026-11-28")
    quota, outcome = run_charge(quota, "2026-11-27")  # a replica whose clock is behind
    assert outcome.usage.day == "2026-11-28" and outcome.usage.day_requests == 2
    assert quota.collect_events()[-1].day == "2026-11-28"


def test_a_retried_charge_is_applied_once():
    quota, first = run_charge(None, "2026-11-27", tokens=5, command_id="c1")
    quota, again = run_charge(quota, "2026-11-27", tokens=5, command_id="c1")
    assert again.allowed and again.usage == first.usage == Usage("2026-11-27", 1, 5, 1, 5)
    quota, _ = run_charge(quota, "2026-11-27", requests=0, tokens=40, command_id="t1")
    quota, again = run_charge(quota, "2026-11-27", requests=0, tokens=40, command_id="t1")
    assert again.usage.day_tokens == 45
    assert [type(e).__name__ for e in quota.collect_events()] == ["Created", "Charged", "Charged"]
    # A refused charge recorded nothing, so its retry is decided again.
    zero = QuotaLimits(daily_requests=1)
    quota, refused = run_charge(quota, "2026-11-27", command_id="c2", limits=zero)
    assert not refused.allowed
    quota, retried = run_charge(quota, "2026-11-27", command_id="c2")
    assert retried.allowed and retried.usage.day_requests == 2


def test_recent_ids_are_bounded():
    quota = None
    for i in range(RECENT_IDS + 10):
        quota, _ = run_charge(quota, "2026-11-27", requests=0, tokens=1, command_id=f"t{i}")
    assert len(quota.recent_ids) == RECENT_IDS
    assert "t0" not in quota.recent_ids and f"t{RECENT_IDS + 9}" in quota.recent_ids


def test_a_quota_rebuilt_from_its_events_or_a_snapshot_is_the_same():
    quota = None
    for day in ("2026-11-27", "2026-11-27", "2026-11-28", "2026-12-01"):
        quota, _ = run_charge(quota, day, tokens=3)
    quota, _ = run_charge(quota, "2026-12-01", requests=0, tokens=11)
    events = quota.collect_events()
    rebuilt = replay(events)
    assert rebuilt.id == quota.id == quota_id(KEY)
    assert rebuilt.__dict__ == quota.__dict__
    assert rebuilt.usage("2026-12-01") == Usage("2026-12-01", 1, 14, 1, 14)
    assert Snapshot.take(quota).mutate(None).__dict__ == quota.__dict__


def test_utc_day():
    assert utc_day(epoch("2026-11-27T23:59:59")) == "2026-11-27"
    assert utc_day(epoch("2026-11-28T00:00:00")) == "2026-11-28"


# --- the behaviour: which key takes which command ---------------------------------------------


@pytest.fixture
def clocks() -> ManualClocks:
    return ManualClocks(wall=epoch("2026-11-27T12:00:00"))


@pytest.fixture
def rates(clocks) -> RateLimitDeps:
    return RateLimitDeps(interval=5, grace=20, limits=LIMITS)


def decide(kind: ObjectKind, deps: RateLimitDeps, clocks: ManualClocks, key, state, command):
    """The kind's handler of `command` as its host runs it: parsed from the bytes on the bus."""
    parsed = kind.parse(command.model_dump_json().encode())
    return kind.decide(parsed, state, kind.context(key, deps, clocks.clock))


def test_the_limiter_kind_limits_ips_in_memory(rates, clocks):
    key = "203.0.113.7"
    assert not limiter.durable
    state = None
    replies = []
    for _ in range(5):
        state, reply = decide(limiter, rates, clocks, key, state, TakeToken())
        replies.append(reply)
    assert replies == [RateDecision(allowed=True, cooldown=0)] * 4 + [
        RateDecision(allowed=False, cooldown=5)
    ]
    assert isinstance(state, Limiter)
    clocks.monotonic += 5
    assert decide(limiter, rates, clocks, key, state, TakeToken())[1].allowed
    # A forgotten limiter (evicted, or another replica) starts afresh, as the demo's does.
    assert decide(limiter, rates, clocks, key, None, TakeToken())[1] == RateDecision(
        allowed=True, cooldown=0
    )


def test_the_quota_kind_keeps_quotas_as_events(rates, clocks):
    key = "alice"
    assert quota.durable
    state, reply = decide(quota, rates, clocks, key, None, GetQuota())
    assert state is None
    assert reply == QuotaUsage(
        allowed=True, day="2026-11-27", month="2026-11",
        day_requests=0, day_tokens=0, month_requests=0, month_tokens=0,
    )
    state, reply = decide(quota, rates, clocks, key, None, ChargeQuota())
    assert isinstance(state, Quota) and reply.allowed and reply.day_requests == 1
    state, reply = decide(quota, rates, clocks, key, state, ChargeQuota(requests=0, tokens=120))
    assert reply.day_tokens == 120 and not reply.allowed
    assert reply.reason == "Daily AI token quota reached."
    state, reply = decide(quota, rates, clocks, key, state, GetQuota())
    assert not reply.allowed and reply.reason == "Daily AI token quota reached."
    assert [type(e).__name__ for e in state.collect_events()] == ["Created", "Charged", "Charged"]
    # The next UTC day: the day's usage is 0 again; a GetQuota records nothing.
    clocks.wall = epoch("2026-11-28T00:00:01")
    state, reply = decide(quota, rates, clocks, key, state, GetQuota())
    assert reply.allowed and reply.day == "2026-11-28" and reply.day_tokens == 0
    assert reply.month_tokens == 120 and state.collect_events() == []


@pytest.mark.parametrize(
    ("kind", "command", "words"),
    [
        (limiter, ChargeQuota(), "per-IP limiter"),
        (limiter, GetQuota(), "per-IP limiter"),
        (quota, TakeToken(), "AI quota"),
    ],
)
def test_a_command_of_another_kind_is_a_bad_command(rates, clocks, kind, command, words):
    with pytest.raises(BadCommand, match=words):
        decide(kind, rates, clocks, "1.2.3.4", None, command)


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("DURACHAT_RATE_INTERVAL", "0.5")
    monkeypatch.setenv("DURACHAT_RATE_GRACE", "2")
    monkeypatch.setenv("DURACHAT_QUOTA_DAILY_REQUESTS", "7")
    monkeypatch.setenv("DURACHAT_QUOTA_MONTHLY_TOKENS", "9")
    made = RateLimitSettings().deps()
    assert (made.interval, made.grace) == (0.5, 2)
    assert made.limits == QuotaLimits(daily_requests=7, monthly_tokens=9)
    for name in ("DURACHAT_RATE_INTERVAL", "DURACHAT_RATE_GRACE",
                 "DURACHAT_QUOTA_DAILY_REQUESTS", "DURACHAT_QUOTA_MONTHLY_TOKENS"):
        monkeypatch.delenv(name)
    defaults = RateLimitSettings()
    assert (defaults.rate_interval, defaults.rate_grace) == (5.0, 20.0)
    assert defaults.deps().limits == QuotaLimits(200, 200_000, 3000, 3_000_000)


def test_upload_bytes_are_charged_per_day_up_to_the_limit() -> None:
    from services.ratelimit.domainmodel import charge_upload_bytes

    quota, first = charge_upload_bytes(None, "u", "c1", "2026-12-01", 60, limit=100)
    assert first.allowed and first.day_bytes == 60 and quota is not None
    quota, again = charge_upload_bytes(quota, "u", "c1", "2026-12-01", 60, limit=100)
    assert again.allowed and again.day_bytes == 60  # a retry is applied once
    quota, over = charge_upload_bytes(quota, "u", "c2", "2026-12-01", 41, limit=100)
    assert not over.allowed and "60 of 100" in (over.reason or "") and over.day_bytes == 60
    quota, rest = charge_upload_bytes(quota, "u", "c3", "2026-12-01", 40, limit=100)
    assert rest.allowed and rest.day_bytes == 100
    quota, tomorrow = charge_upload_bytes(quota, "u", "c4", "2026-12-02", 100, limit=100)
    assert tomorrow.allowed and tomorrow.day_bytes == 100
    assert [type(e).__name__ for e in quota.collect_events()] == [
        "Created", "UploadBytesCharged", "UploadBytesCharged", "UploadBytesCharged"]
