"""The context service: hosts per-user AI contexts and streams their replies."""

from __future__ import annotations

import logging

from nats.aio.client import Client as NATS
from pydantic import AliasChoices, Field, SecretStr

from services.context.handlers import ContextDeps, context
from services.context.provider import make_provider
from services.context.replies import ReplyConfig, ReplyStreamer, stream_limit
from services.runtime.kind import Clock
from services.runtime.service import (
    Hosting,
    ObjectService,
    ObjectServiceSettings,
    ServiceParts,
    run,
)
from services.settings import AiTimeouts

log = logging.getLogger(__name__)


class ContextServiceSettings(ObjectServiceSettings, AiTimeouts):
    gemini_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("GEMINI_API_KEY", "DURACHAT_GEMINI_API_KEY"),
        description="Gemini API key; without one an offline provider answers, labelled as such",
    )
    gemini_base_url: str | None = Field(
        None, description="Another endpoint speaking the Gemini REST API (tests, proxies)"
    )
    ai_model: str = Field("gemini-2.5-flash", description="model for users who chose none")
    ai_token_budget: int = Field(8000, ge=256, description="prompt tokens a window may take")
    ai_offline_delay: float = Field(0.03, ge=0, description="seconds between offline chunks")


async def build(nc: NATS, settings: ContextServiceSettings, clock: Clock) -> ServiceParts:
    key = settings.gemini_api_key.get_secret_value() if settings.gemini_api_key else None
    provider = make_provider(
        key,
        settings.gemini_base_url,
        first_chunk_timeout=settings.ai_first_chunk_timeout,
        chunk_timeout=settings.ai_chunk_timeout,
        offline_delay=settings.ai_offline_delay,
    )
    log.info("AI replies come from %s (%s)", provider.label, provider.name)
    config = ReplyConfig(
        default_model=settings.ai_model,
        token_budget=settings.ai_token_budget,
        # The streamer ends a reply a little before the room's deadline, with its own words.
        max_duration=stream_limit(settings.ai_max_duration),
        request_timeout=settings.request_timeout,
    )
    streamer = ReplyStreamer(nc, provider, config)
    return ServiceParts(
        [Hosting(context, ContextDeps(streamer))],
        stopping=[streamer.stop],
        closing=[provider.aclose],
    )


SERVICE = ObjectService("context", ContextServiceSettings, build)


def main() -> None:
    run(SERVICE)


if __name__ == "__main__":
    main()
