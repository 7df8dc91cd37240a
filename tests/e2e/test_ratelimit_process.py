"""The ratelimit service as LocalSystem runs it: a real process that answers over NATS, and a
user's quota that survives kill -9 of that process (the next one rebuilds it from events)."""

from __future__ import annotations

import uuid

import nats
import pytest

from contracts.ratelimit import (
    ChargeQuota,
    GetQuota,
    LimiterClient,
    QuotaClient,
    QuotaUsage,
    RateDecision,
    TakeToken,
)

pytestmark = pytest.mark.e2e

# Until an answer comes: a new process takes the partitions within the lease TTL, and the
# clients retry a command that finds no owner (with the same command id) until then.
PATIENCE = 20.0


async def test_the_ratelimit_process_answers_and_keeps_quotas(system):
    assert system.ratelimit is not None and system.ratelimit in system.services()
    assert system.ratelimit.alive()
    nc = await nats.connect(system.nats.url)
    try:
        limiters, quotas = LimiterClient(nc, PATIENCE), QuotaClient(nc, PATIENCE)
        assert isinstance(await limiters.send("127.0.0.1", TakeToken()), RateDecision)
        key = f"e2e-{uuid.uuid4().hex[:8]}"
        charged = await quotas.send(key, ChargeQuota(tokens=12))
        assert isinstance(charged, QuotaUsage) and charged.allowed
        assert (charged.day_requests, charged.day_tokens) == (1, 12)

        system.ratelimit.kill()  # kill -9: no hand-over; the next process waits out the lease
        system.start_ratelimit()
        assert await quotas.send(key, GetQuota()) == charged
        assert system.alive()
    finally:
        await nc.drain()
