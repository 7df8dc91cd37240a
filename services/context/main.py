"""The context service process: hosts per-user AI contexts and streams their replies."""

from __future__ import annotations

import logging

import uvloop
from pydantic import AliasChoices, Field, SecretStr

from services.context.handlers import ContextBehaviour
from services.context.provider import make_provider
from services.context.replies import ReplyConfig, ReplyStreamer, stream_limit
from services.runtime.service import ObjectServiceSettings, serve

log = logging.getLogger(__name__)


class ContextServiceSettings(ObjectServiceSettings):
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
    ai_first_chunk_timeout: float = Field(30.0, gt=0, description="seconds to the first chunk")
    ai_chunk_timeout: float = Field(30.0, gt=0, description="seconds between chunks at most")
    ai_max_duration: float = Field(
        180.0,
        gt=0,
        description="seconds a reply may stream: the room's deadline (the same setting there); "
        "the streamer stops itself a little before it",
    )
    ai_offline_delay: float = Field(0.03, ge=0, description="seconds between offline chunks")


async def serve_context(settings: ContextServiceSettings) -> None:
    key = settings.gemini_api_key.get_secret_value() if settings.gemini_api_key else None
    provider = make_provider(
        key,
        settings.gemini_base_url,
        first_chunk_timeout=settings.ai_first_chunk_timeout,
        chunk_timeout=settings.ai_chunk_timeout,
        offline_delay=settings.ai_offline_delay,
    )
    log.info("AI replies come from %s (%s)", provider.label, provider.name)
    streamer: ReplyStreamer | None = None

    class LateBoundReplies:
        """The streamer needs the service's NATS connection, made inside serve()."""

        def start(self, *args) -> None:
            assert streamer is not None
            streamer.start(*args)

    config = ReplyConfig(
        default_model=settings.ai_model,
        token_budget=settings.ai_token_budget,
        max_duration=stream_limit(settings.ai_max_duration),
        request_timeout=settings.request_timeout,
    )

    def on_connected(nc) -> None:
        nonlocal streamer
        streamer = ReplyStreamer(nc, provider, config)

    async def on_stopping() -> None:
        if streamer is not None:
            await streamer.stop()

    try:
        await serve(
            ContextBehaviour(LateBoundReplies()),
            settings,
            on_connected=on_connected,
            on_stopping=on_stopping,
        )
    finally:
        await provider.aclose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvloop.run(serve_context(ContextServiceSettings()))


if __name__ == "__main__":
    main()
