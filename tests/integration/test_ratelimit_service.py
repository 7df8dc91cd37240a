"""The ratelimit objects on a real nats-server, hosted in-process: the per-IP limiter over NATS
and in memory only, the per-user quotas durable (rebuilt equal after eviction, snapshots and a
restart), a retried charge applied once, and bad requests refused."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import nats
import pytest

from contracts.common import ErrorCode, ErrorReply
from contracts.ratelimit import (
    LIMITER,
    QUOTA,
    ChargeQuota,
    GetQuota,
    LimiterClient,
    QuotaClient,
    QuotaUsage,
    RateDecision,
    TakeToken,
)
from contracts.subjects import command_subject, event_stream, event_subject
from services.ratelimit.domainmodel import QuotaLimits
from services.ratelimit.main import SERVICE as RATELIMIT_SERVICE
from services.runtime.eventstore import ObjectEventStore
from tests.conftest import hosted
from tests.support import ManualClocks, eventually
from tests.support import ask as ask_object

pytestmark = pytest.mark.nats

LIMITS = QuotaLimits(daily_requests=3, daily_tokens=100, monthly_requests=10, monthly_tokens=1000)


@pytest.fixture
def clocks() -> ManualClocks:
    return ManualClocks(wall=datetime(2026, 11, 27, 12, tzinfo=UTC).timestamp())


def limit_settings(limits: QuotaLimits) -> dict:
    return {
        "quota_daily_requests": limits.daily_requests,
        "quota_daily_tokens": limits.daily_tokens,
        "quota_monthly_requests": limits.monthly_requests,
        "quota_monthly_tokens": limits.monthly_tokens,
    }


def fake_clock_service(nats_server, clocks: ManualClocks, limits: QuotaLimits = LIMITS, **settings):
    """The ratelimit service on the test's clocks: interval 5 s, grace 20 s, `limits`."""
    return hosted(
        nats_server, RATELIMIT_SERVICE, clock=clocks.clock, rate_interval=5, rate_grace=20,
        **limit_settings(limits), **settings,
    )


def ratelimit_service(nats_server, **settings):
    return hosted(nats_server, RATELIMIT_SERVICE, **settings)


async def ask(nc: nats.NATS, key: str, command, timeout: float = 5.0):
    """A limiter is asked with TakeToken; a quota with anything else."""
    client = LimiterClient if isinstance(command, TakeToken) else QuotaClient
    return await ask_object(nc, client, key, command, timeout)


async def stored_subjects(nc: nats.NATS, subject: str) -> dict[str, int]:
    info = await nc.jetstream().stream_info(event_stream(QUOTA), subjects_filter=subject)
    return info.state.subjects or {}


async def streams(nc: nats.NATS) -> set[str]:
    return {info.config.name for info in await nc.jetstream().streams_info()}


def new_ip() -> str:
    return f"198.51.100.{uuid.uuid4().int % 250}-{uuid.uuid4().hex[:6]}"


def new_user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


# --- per-IP limiter ------------------------------------------------------------------------------


async def test_the_limiter_over_nats_follows_the_schedule(nats_server, nc, clocks):
    async with fake_clock_service(nats_server, clocks):
        key = new_ip()
        replies = [await ask(nc, key, TakeToken()) for _ in range(6)]
        assert replies == [RateDecision(allowed=True, cooldown=0)] * 4 + [
            RateDecision(allowed=False, cooldown=5)
        ] * 2
        clocks.monotonic += 5
        assert (await ask(nc, key, TakeToken())).allowed
        clocks.monotonic += 0.1
        refused = await ask(nc, key, TakeToken())
        assert not refused.allowed and refused.cooldown == pytest.approx(4.9)
        # Another IP has a limit of its own.
        assert (await ask(nc, new_ip(), TakeToken())).allowed


async def test_the_limiter_in_real_time(nats_server, nc):
    async with ratelimit_service(nats_server, rate_interval=0.5, rate_grace=2):
        key = new_ip()
        # A burst at once: grace / interval = 4 pass (unless the asks took 0.5 s), then refused.
        burst = await asyncio.gather(*(ask(nc, key, TakeToken()) for _ in range(8)))
        assert sum(r.allowed for r in burst) == 4
        cooldown = max(r.cooldown for r in burst)
        assert 0 < cooldown <= 0.5
        await asyncio.sleep(cooldown + 0.05)
        assert (await ask(nc, key, TakeToken())).allowed
        assert not (await ask(nc, key, TakeToken())).allowed


async def test_the_limiter_is_in_memory_only(nats_server, nc, clocks):
    async with fake_clock_service(nats_server, clocks) as running:
        host = running.host(LIMITER)
        loaded: list[str] = []
        real_load = host.store.load

        async def load(key):
            loaded.append(key)
            return await real_load(key)

        host.store.load = load
        address = new_ip()
        key = address
        for _ in range(4):
            assert (await ask(nc, key, TakeToken())).allowed
        assert not (await ask(nc, key, TakeToken())).allowed
        # Nothing was read or written for it: no events, no snapshot.
        assert loaded == []
        assert not {event_stream(LIMITER), f"SNAP_{LIMITER.upper()}"} & await streams(nc)
        # Evicted, it is forgotten (as the demo's limiter is): the burst is back.
        assert await host.evict(key)
        assert [(await ask(nc, key, TakeToken())).allowed for _ in range(5)] == [True] * 4 + [False]
        assert loaded == []
        assert event_stream(LIMITER) not in await streams(nc)


# --- per-user quotas -------------------------------------------------------------------------------


async def test_quotas_are_durable_across_eviction_snapshots_and_a_restart(nats_server, nc, clocks):
    key = new_user()
    async with fake_clock_service(nats_server, clocks, snapshot_every=3) as running:
        host = running.host(QUOTA)
        assert await ask(nc, key, GetQuota()) == QuotaUsage(
            allowed=True, day="2026-11-27", month="2026-11",
            day_requests=0, day_tokens=0, month_requests=0, month_tokens=0,
        )
        assert await stored_subjects(nc, event_subject(QUOTA, key)) == {}  # a read stores nothing
        for tokens in (10, 20):
            assert (await ask(nc, key, ChargeQuota())).allowed
            assert (await ask(nc, key, ChargeQuota(requests=0, tokens=tokens))).allowed
        before = await ask(nc, key, GetQuota())
        assert await stored_subjects(nc, event_subject(QUOTA, key))  # the charges are
        assert (before.day_requests, before.day_tokens) == (2, 30)
        snapshot, covered = await ObjectEventStore(nc, QUOTA).load_snapshot(key)
        assert snapshot is not None and snapshot.version == 3 and covered > 0
        assert await host.evict(key)
        assert await ask(nc, key, GetQuota()) == before  # rebuilt from a snapshot + a commit
        assert (await ask(nc, key, ChargeQuota())).allowed
        refused = await ask(nc, key, ChargeQuota())
        assert not refused.allowed and refused.reason == "Daily AI request quota reached."
        after = await ask(nc, key, GetQuota())
        assert after.day_requests == 3 and not after.allowed

    commits = await ObjectEventStore(nc, QUOTA).read(key)
    assert [type(e).__name__ for c in commits for e in c.events] == ["Created"] + ["Charged"] * 5

    # A new process (another replica, or a restart) rebuilds the same usage.
    async with fake_clock_service(nats_server, clocks):
        assert await ask(nc, key, GetQuota()) == after
        # The next UTC day starts from zero; the month keeps counting.
        clocks.wall += 86_400
        next_day = await ask(nc, key, ChargeQuota(tokens=5))
        assert next_day.allowed and next_day.day == "2026-11-28"
        assert (next_day.day_requests, next_day.day_tokens) == (1, 5)
        assert (next_day.month_requests, next_day.month_tokens) == (4, 35)


async def test_a_retried_charge_is_applied_once(nats_server, nc, clocks):
    key = new_user()
    async with fake_clock_service(nats_server, clocks) as running:
        host = running.host(QUOTA)
        charge = ChargeQuota(tokens=7)
        first = await ask(nc, key, charge)
        again = await ask(nc, key, charge)  # the same command_id: a retry
        assert first.allowed and again == first and first.day_requests == 1
        # Retries racing each other land in one batch: still once.
        tokens = ChargeQuota(requests=0, tokens=50)
        replies = await asyncio.gather(*(ask(nc, key, tokens) for _ in range(5)))
        assert {r.day_tokens for r in replies} == {57}
        # And after the object was evicted, the retry is still recognised.
        assert await host.evict(key)
        assert (await ask(nc, key, charge)).day_requests == 1
        assert (await ask(nc, key, tokens)).day_tokens == 57
    commits = await ObjectEventStore(nc, QUOTA).read(key)
    assert [type(e).__name__ for c in commits for e in c.events] == ["Created", "Charged", "Charged"]


# --- bad requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "key", "command", "words"),
    [
        (LimiterClient, "192.0.2.1", ChargeQuota(), "per-IP limiter"),
        (LimiterClient, "192.0.2.1", GetQuota(), "per-IP limiter"),
        (QuotaClient, "carol", TakeToken(), "AI quota"),
    ],
)
async def test_a_command_to_the_wrong_kind_is_a_bad_request(nats_server, nc, client, key, command, words):
    async with ratelimit_service(nats_server):
        reply = await ask_object(nc, client, key, command)
        assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.BAD_REQUEST
        assert words in reply.message
    assert await stored_subjects(nc, event_subject(QUOTA, key)) == {}


async def test_a_malformed_command_is_a_bad_request_naming_the_field(nats_server, nc):
    async with ratelimit_service(nats_server):
        subject = command_subject(QUOTA, new_user())
        msg = await nc.request(subject, b'{"type": "charge", "requests": 2}', timeout=5)
        reply = QuotaClient.replies.validate_json(msg.data)
        assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.BAD_REQUEST
        assert "requests" in reply.message
        msg = await nc.request(subject, b'{"type": "nope"}', timeout=5)
        assert QuotaClient.replies.validate_json(msg.data).code == ErrorCode.BAD_REQUEST


async def test_the_gateway_charges_the_service_and_locally_only_without_it(nats_server, nc):
    from services.gateway.ratelimit import IpRateLimiter, SocketLimit

    limiter = IpRateLimiter(nc, interval=5, grace=20, timeout=0.5)
    address = f"198.51.100.{uuid.uuid4().int % 250}"
    async with ratelimit_service(nats_server, rate_interval=5, rate_grace=20):
        # The service's limiter, as the demo's: every charge pushes 5 s on; four stay within
        # the grace, the fifth announces a cooldown of 5 s. The local fallback is not used.
        cooldowns = [await limiter.charge(address) for _ in range(5)]
        assert cooldowns[:4] == [0] * 4 and cooldowns[4] == pytest.approx(5, abs=0.5)
        assert limiter.fallback.limiters == {}
        # A socket's gate on that service: a frame passes and is charged after; the next is
        # refused while the charge is in flight, and, once the cooldown it announced (10 s,
        # the sixth push) is known, for that long, without asking the service again.
        socket = SocketLimit(limiter, address)
        assert socket.admit() is None
        assert socket.admit() is not None
        await eventually(lambda: not socket.gate.awaiting, what="the charge's answer")
        wait = socket.admit()
        assert wait is not None and 9 < wait <= 10
    # The service is gone: another address is charged by the same rule, in the gateway.
    other = f"203.0.113.{uuid.uuid4().int % 250}"
    cooldowns = [await limiter.charge(other) for _ in range(5)]
    assert cooldowns[:4] == [0] * 4 and cooldowns[4] == pytest.approx(5, abs=0.5)
    assert list(limiter.fallback.limiters) == [other]


async def test_an_ai_request_is_refused_when_quotas_cannot_be_checked(nats_server, nc):
    from services.ratelimit.client import (
        QUOTAS_UNAVAILABLE,
        QuotaRefused,
        charge_ai_request,
        charge_ai_tokens,
    )

    user = f"u-{uuid.uuid4().hex[:8]}"
    limits = QuotaLimits(daily_requests=2)
    async with ratelimit_service(nats_server, **limit_settings(limits)):
        # Within quota: counted; tokens recorded; past the daily requests: refused, saying so.
        assert (await charge_ai_request(nc, user)).day_requests == 1
        assert (await charge_ai_tokens(nc, user, 500)).day_tokens == 500
        await charge_ai_request(nc, user)
        with pytest.raises(QuotaRefused, match="Daily AI request quota reached"):
            await charge_ai_request(nc, user)
    # No ratelimit service: refused, unlike chat, which falls back to a local limiter.
    with pytest.raises(QuotaRefused) as refused:
        await charge_ai_request(nc, user, timeout=0.5)
    assert str(refused.value) == QUOTAS_UNAVAILABLE
