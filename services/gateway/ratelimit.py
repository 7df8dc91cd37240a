"""Asking the ratelimit service before a frame goes on, with a local fallback.

Every frame a socket sends (the name frame included, bad frames too) takes a token from the
limiter object of the client's IP. The ratelimit service holds those objects, so all
gateways share one limit per IP. When it does not answer in time (down, restarting, or
overloaded), the gateway decides with the same rule on its own, per gateway: chat keeps
working, at worst a little more permissive across several gateways.
"""

from __future__ import annotations

import ipaddress
import logging
import time

from nats.aio.client import Client as NATS

from contracts.common import ErrorCode
from contracts.ratelimit import LimiterClient, RateDecision, TakeToken
from services.ratelimit.domainmodel import Limiter
from services.runtime import metrics

log = logging.getLogger(__name__)


class LocalLimiter:
    """The per-IP limiters of the ratelimit service, run in this process when the service
    does not answer. The same `Limiter` class, so both decide by one rule."""

    def __init__(self, interval: float, grace: float) -> None:
        self.interval = interval
        self.grace = grace
        self.limiters: dict[str, Limiter] = {}

    def take(self, key: str, now: float | None = None) -> RateDecision:
        now = time.monotonic() if now is None else now
        limiter = self.limiters.get(key)
        if limiter is None:
            if len(self.limiters) > 100_000:  # forget addresses whose limit has lapsed
                self.limiters = {k: v for k, v in self.limiters.items() if v.next_allowed > now}
            limiter = self.limiters[key] = Limiter(self.interval, self.grace)
        take = limiter.take(now)
        return RateDecision(allowed=take.allowed, cooldown=take.cooldown)


class IpRateLimiter:
    """Decides whether a frame from `address` may pass.

    Like the chat demo's own limiter client, an address in a cooldown the service announced
    is refused here until it ends, without asking again: a flooding client then costs the
    gateway a dictionary lookup per frame, not a round trip (and the service nothing).
    """

    def __init__(self, nc: NATS, interval: float, grace: float, timeout: float) -> None:
        self.limiters = LimiterClient(nc, timeout=timeout)
        self.timeout = timeout
        self.fallback = LocalLimiter(interval, grace)
        self.cooling: dict[str, float] = {}  # address -> monotonic time its cooldown ends

    async def take(self, address: str) -> RateDecision:
        now = time.monotonic()
        until = self.cooling.get(address)
        if until is not None:
            if now < until:
                metrics.RATELIMIT_REFUSALS.labels("cooldown").inc()
                return RateDecision(allowed=False, cooldown=until - now)
            del self.cooling[address]
        decision = await self._ask(address)
        if not decision.allowed:
            if len(self.cooling) > 100_000:  # forget cooldowns that have ended
                self.cooling = {k: v for k, v in self.cooling.items() if v > now}
            self.cooling[address] = time.monotonic() + decision.cooldown
        return decision

    async def _ask(self, address: str) -> RateDecision:
        reply = await self.limiters.send_once(address, TakeToken(), self.timeout)
        if isinstance(reply, RateDecision):
            if not reply.allowed:
                metrics.RATELIMIT_REFUSALS.labels("service").inc()
            return reply
        metrics.RATELIMIT_FALLBACK.inc()
        if reply.code == ErrorCode.UNAVAILABLE:  # no answer in time, or no owner
            log.debug("ratelimit service did not decide for %s; deciding locally", address)
        else:
            log.warning("ratelimit service refused to decide for %s: %s", address, reply.message)
        decision = self.fallback.take(address)
        if not decision.allowed:
            metrics.RATELIMIT_REFUSALS.labels("local_fallback").inc()
        return decision


def client_address(peer: str | None, forwarded_for: str | None, trusted: frozenset[str]) -> str:
    """The client's IP: the socket's peer, or, when the peer is a trusted proxy, the
    right-most address in X-Forwarded-For that is not itself a trusted proxy."""
    if peer and peer in trusted and forwarded_for:
        for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
            try:
                address = str(ipaddress.ip_address(hop))
            except ValueError:
                break  # a malformed hop: trust nothing further left
            if address not in trusted:
                return address
    return peer or "unknown"
