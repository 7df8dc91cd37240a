"""The upload service: hosts one object per upload on NATS; the bytes are in the object store
bucket, written by the gateway piece by piece (services/upload/store.py)."""

from __future__ import annotations

from nats.aio.client import Client as NATS
from pydantic import AliasChoices, Field, SecretStr

from contracts.upload import UploadClient
from services.runtime.kind import Clock
from services.runtime.service import (
    Hosting,
    ObjectService,
    ObjectServiceSettings,
    ServiceParts,
    run,
)
from services.settings import UploadRules
from services.upload.gemini import GeminiFiles
from services.upload.handlers import UploadDeps, upload
from services.upload.store import UploadBucket


class UploadSettings(ObjectServiceSettings, UploadRules):
    gemini_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("GEMINI_API_KEY", "DURACHAT_GEMINI_API_KEY"),
        description="Gemini API key; without one, finished uploads are not handed to Gemini",
    )
    gemini_base_url: str | None = Field(
        None, description="Another endpoint speaking the Gemini REST API (tests, proxies)"
    )
    gemini_poll_every: float = Field(1.0, gt=0, description="seconds between checks of a copy Gemini processes")


async def build(nc: NATS, settings: UploadSettings, clock: Clock) -> ServiceParts:
    bucket = UploadBucket(nc, settings.upload_bucket, replicas=settings.stream_replicas)
    await bucket.ensure()
    key = settings.gemini_api_key.get_secret_value().strip() if settings.gemini_api_key else ""
    gemini = GeminiFiles(key, settings.gemini_base_url) if key else None
    deps = UploadDeps(
        bucket=bucket,
        uploads=UploadClient(nc, timeout=settings.request_timeout),
        max_size=settings.upload_max_size,
        ttl=settings.upload_ttl,
        gemini=gemini,
        poll_every=settings.gemini_poll_every,
    )
    closing = [gemini.aclose] if gemini is not None else []
    return ServiceParts([Hosting(upload, deps)], closing=closing)


SERVICE = ObjectService("upload", UploadSettings, build)


def main() -> None:
    run(SERVICE)


if __name__ == "__main__":
    main()
