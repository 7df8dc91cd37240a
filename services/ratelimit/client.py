"""How other services ask for an AI request against a user's quotas.

Unlike chat, which falls back to a local limiter, an AI request is refused when the quotas
cannot be checked: a call to the provider costs money, and a ratelimit service that is down
must not mean unlimited spending.
"""

from __future__ import annotations

import logging

from nats.aio.client import Client as NATS

from contracts.common import ErrorReply
from contracts.ratelimit import ChargeQuota, QuotaClient, QuotaUsage

log = logging.getLogger(__name__)

QUOTAS_UNAVAILABLE = "AI requests are paused: quotas cannot be checked right now. Try again later."


class QuotaRefused(Exception):
    """The request may not go to the AI provider; str() says why, in words for the user."""


async def charge_ai_request(nc: NATS, user_id: str, timeout: float = 2.0) -> QuotaUsage:
    """Count one AI request for `user_id`; raises QuotaRefused when over quota or unknown."""
    return await _charge(nc, user_id, ChargeQuota(requests=1, tokens=0), timeout)


async def charge_ai_tokens(nc: NATS, user_id: str, tokens: int, timeout: float = 2.0) -> QuotaUsage:
    """Record the tokens a reply used (always recorded: they were spent)."""
    return await _charge(nc, user_id, ChargeQuota(requests=0, tokens=tokens), timeout)


async def _charge(nc: NATS, user_id: str, command: ChargeQuota, timeout: float) -> QuotaUsage:
    reply = await QuotaClient(nc, timeout=timeout).send(user_id, command)
    if isinstance(reply, ErrorReply):
        log.warning("quotas of %s could not be checked (%s): refusing", user_id, reply.message)
        raise QuotaRefused(QUOTAS_UNAVAILABLE)
    if not reply.allowed:
        raise QuotaRefused(reply.reason or "AI quota reached.")
    return reply
