"""The ratelimit service: hosts per-IP limiters and per-user AI quotas on NATS."""

from __future__ import annotations

from nats.aio.client import Client as NATS
from pydantic import Field

from services.ratelimit.domainmodel import QuotaLimits
from services.ratelimit.handlers import RateLimitDeps, limiter, quota
from services.runtime.kind import Clock
from services.runtime.service import (
    Hosting,
    ObjectService,
    ObjectServiceSettings,
    ServiceParts,
    run,
)
from services.settings import RateRule


class RateLimitSettings(ObjectServiceSettings, RateRule):
    quota_daily_requests: int = Field(200, ge=0, description="AI requests per user per UTC day")
    quota_daily_tokens: int = Field(200_000, ge=0, description="AI tokens per user per UTC day")
    quota_monthly_requests: int = Field(3000, ge=0, description="AI requests per user per UTC month")
    quota_monthly_tokens: int = Field(
        3_000_000, ge=0, description="AI tokens per user per UTC month"
    )
    quota_daily_upload_bytes: int = Field(
        10 * 1024**3, ge=0, description="bytes a user may upload per UTC day"
    )

    def limits(self) -> QuotaLimits:
        return QuotaLimits(
            daily_requests=self.quota_daily_requests,
            daily_tokens=self.quota_daily_tokens,
            monthly_requests=self.quota_monthly_requests,
            monthly_tokens=self.quota_monthly_tokens,
            daily_upload_bytes=self.quota_daily_upload_bytes,
        )

    def deps(self) -> RateLimitDeps:
        return RateLimitDeps(self.rate_interval, self.rate_grace, self.limits())


async def build(nc: NATS, settings: RateLimitSettings, clock: Clock) -> ServiceParts:
    deps = settings.deps()
    return ServiceParts([Hosting(limiter, deps), Hosting(quota, deps)])


SERVICE = ObjectService("ratelimit", RateLimitSettings, build)


def main() -> None:
    run(SERVICE)


if __name__ == "__main__":
    main()
