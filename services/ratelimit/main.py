"""The ratelimit service process: hosts per-IP limiters and per-user AI quotas on NATS."""

from __future__ import annotations

from pydantic import Field

from services.ratelimit.domainmodel import QuotaLimits
from services.ratelimit.handlers import RateLimitBehaviour
from services.runtime.service import ObjectServiceSettings, run


class RateLimitSettings(ObjectServiceSettings):
    rate_interval: float = Field(
        5.0, gt=0, description="seconds each frame pushes an IP's next allowed time on"
    )
    rate_grace: float = Field(
        20.0, ge=0, description="how far ahead that time may run before frames are refused"
    )
    quota_daily_requests: int = Field(200, ge=0, description="AI requests per user per UTC day")
    quota_daily_tokens: int = Field(200_000, ge=0, description="AI tokens per user per UTC day")
    quota_monthly_requests: int = Field(3000, ge=0, description="AI requests per user per UTC month")
    quota_monthly_tokens: int = Field(
        3_000_000, ge=0, description="AI tokens per user per UTC month"
    )

    def limits(self) -> QuotaLimits:
        return QuotaLimits(
            daily_requests=self.quota_daily_requests,
            daily_tokens=self.quota_daily_tokens,
            monthly_requests=self.quota_monthly_requests,
            monthly_tokens=self.quota_monthly_tokens,
        )


def behaviour(settings: RateLimitSettings) -> RateLimitBehaviour:
    return RateLimitBehaviour(settings.rate_interval, settings.rate_grace, settings.limits())


def main() -> None:
    settings = RateLimitSettings()
    run(behaviour(settings), settings)


if __name__ == "__main__":
    main()
