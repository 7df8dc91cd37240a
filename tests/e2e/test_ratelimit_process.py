"""The ratelimit service as LocalSystem runs it: a real process that answers over NATS, and a
user's quota that survives kill -9 of that process (the next one rebuilds it from events)."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from contracts.ratelimit import (
    RATELIMIT,
    ChargeQuota,
    GetQuota,
    QuotaUsage,
    RateDecision,
    TakeToken,
    ip_key,
    ratelimit_reply,
    user_key,
)
from contracts.subjects import command_subject

pytestmark = pytest.mark.e2e


async def ask(nc: nats.NATS, key: str, command, deadline: float = 20.0):
    """Ask until an answer comes (a new process takes the partitions within the lease TTL)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        try:
            msg = await nc.request(
                command_subject(RATELIMIT, key), command.model_dump_json().encode(), timeout=2
            )
            return ratelimit_reply.validate_json(msg.data)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            if loop.time() > end:
                raise
            await asyncio.sleep(0.1)


async def test_the_ratelimit_process_answers_and_keeps_quotas(system):
    assert system.ratelimit is not None and system.ratelimit in system.services()
    assert system.ratelimit.alive()
    nc = await nats.connect(system.nats.url)
    try:
        assert isinstance(await ask(nc, ip_key("127.0.0.1"), TakeToken()), RateDecision)
        key = user_key(f"e2e-{uuid.uuid4().hex[:8]}")
        charged = await ask(nc, key, ChargeQuota(tokens=12))
        assert isinstance(charged, QuotaUsage) and charged.allowed
        assert (charged.day_requests, charged.day_tokens) == (1, 12)

        system.ratelimit.kill()  # kill -9: no hand-over; the next process waits out the lease
        system.start_ratelimit()
        assert await ask(nc, key, GetQuota()) == charged
        assert system.alive()
    finally:
        await nc.drain()
