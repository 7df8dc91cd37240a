"""The chat demo's per-IP limit, decided as the demo decides it: locally first, charged after.

Each socket has a `DemoGate`, the demo's `RateLimiterClient`: a frame passes when the gate is
open; passing closes it and charges the limiter object of the client's IP (`ChargeFrame`, the
demo's POST), off the frame's path. The gate opens again once the limiter has answered and
the cooldown it announced has passed; frames arriving meanwhile are refused with the demo's
frame (plus `retry_after`). So from rest five frames spaced by round trips pass (the fifth
charge is the one that announces a cooldown), then one per interval.

The ratelimit service holds the limiter objects, so all gateways share one limit per IP. When
it does not answer in time (down, restarting, or overloaded), the gateway charges a limiter of
its own with the same rule: chat keeps working, at worst a little more permissive across
several gateways.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS

from contracts.common import ErrorCode
from contracts.ratelimit import ChargeFrame, LimiterClient, RateDecision
from services.ratelimit.domainmodel import Limiter
from services.runtime import metrics, tracing

log = logging.getLogger(__name__)


class LocalLimiter:
    """The per-IP limiters of the ratelimit service, run in this process when the service
    does not answer. The same `Limiter` class, so both decide by one rule."""

    def __init__(self, interval: float, grace: float) -> None:
        self.interval = interval
        self.grace = grace
        self.limiters: dict[str, Limiter] = {}

    def charge(self, key: str, now: float | None = None) -> float:
        """Charge one frame of `key`; the cooldown that leaves (seconds)."""
        now = time.monotonic() if now is None else now
        limiter = self.limiters.get(key)
        if limiter is None:
            if len(self.limiters) > 100_000:  # forget addresses whose limit has lapsed
                self.limiters = {k: v for k, v in self.limiters.items() if v.next_allowed > now}
            limiter = self.limiters[key] = Limiter(self.interval, self.grace)
        return limiter.charge(now)


class IpRateLimiter:
    """Charges the limiter object of an address, or the local one when it does not answer."""

    def __init__(self, nc: NATS, interval: float, grace: float, timeout: float) -> None:
        self.limiters = LimiterClient(nc, timeout=timeout)
        self.timeout = timeout
        self.fallback = LocalLimiter(interval, grace)

    async def charge(self, address: str) -> float:
        """Charge one frame from `address`; the cooldown its limiter announced."""
        started = time.perf_counter()
        reply = await self.limiters.send_once(address, ChargeFrame(), self.timeout)
        metrics.RATELIMIT_CHARGE_SECONDS.observe(time.perf_counter() - started)
        if isinstance(reply, RateDecision):
            metrics.RATELIMIT_FALLBACK_ACTIVE.set(0)
            return reply.cooldown
        metrics.RATELIMIT_FALLBACK.inc()
        metrics.RATELIMIT_FALLBACK_ACTIVE.set(1)
        if reply.code == ErrorCode.UNAVAILABLE:  # no answer in time, or no owner
            log.debug("ratelimit service did not answer for %s; charging locally", address)
        else:
            log.warning("ratelimit service refused to charge %s: %s", address, reply.message)
        return self.fallback.charge(address)


class DemoGate:
    """One socket's side of the limit: the demo's `RateLimiterClient`, as a state machine
    over an explicit clock (`admit` and `answered`), driven by `SocketLimit`.

    The demo's `inCooldown` is true from the frame that passed until its charge was answered
    and the announced cooldown has elapsed; here that is `awaiting or now < open_at`.
    """

    def __init__(self) -> None:
        self.awaiting = False  # a charge is in flight (the demo: callLimiter not returned yet)
        self.open_at = 0.0  # when the announced cooldown ends
        self.round_trip = 0.001  # the last charge's round trip: the wait while one is in flight

    def admit(self, now: float) -> bool:
        """Whether a frame arriving at `now` passes; if it does, the gate closes until
        `answered` (the caller then charges the limiter)."""
        if self.awaiting or now < self.open_at:
            return False
        self.awaiting = True
        return True

    def answered(self, asked_at: float, now: float, cooldown: float) -> None:
        """The charge asked at `asked_at` was answered at `now` with `cooldown` seconds."""
        self.awaiting = False
        self.round_trip = max(0.001, now - asked_at)
        self.open_at = now + cooldown

    def retry_after(self, now: float) -> float:
        """Seconds a refused client should wait before its next frame (rounded up to ms)."""
        wait = self.round_trip if self.awaiting else self.open_at - now
        return max(0.001, math.ceil(wait * 1000 - 1e-6) / 1000)


class SocketLimit:
    """A socket's `DemoGate`, charging `limiter` in the background for every frame passed."""

    def __init__(
        self, limiter: IpRateLimiter, address: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limiter = limiter
        self.address = address
        self.clock = clock
        self.gate = DemoGate()
        self._charging: asyncio.Task | None = None

    def admit(self) -> float | None:
        """None when a frame arriving now passes; else the seconds to tell the client to wait."""
        now = self.clock()
        if self.gate.admit(now):
            # Started on the next turn of the loop, after the frame's own command is sent:
            # the charge is off the frame's path, as in the demo.
            asyncio.get_running_loop().call_soon(self._start, now)
            return None
        metrics.RATELIMIT_REFUSALS.labels("in_flight" if self.gate.awaiting else "cooldown").inc()
        return self.gate.retry_after(now)

    def _start(self, asked_at: float) -> None:
        # A trace of its own: the socket's connection span lives for hours and must not
        # collect a span per frame (services/runtime/tracing.py).
        self._charging = asyncio.create_task(self._charge(asked_at), context=tracing.detached())

    async def _charge(self, asked_at: float) -> None:
        try:
            cooldown = await self.limiter.charge(self.address)
        except Exception:  # never leave the gate shut for good
            log.exception("charging the limiter of %s failed", self.address)
            cooldown = 0.0
        self.gate.answered(asked_at, self.clock(), cooldown)


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
