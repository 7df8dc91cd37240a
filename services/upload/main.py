"""The upload service: hosts one object per upload on NATS; the bytes are in the object store
bucket, written by the gateway piece by piece (services/upload/store.py)."""

from __future__ import annotations

from nats.aio.client import Client as NATS

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
from services.upload.handlers import UploadDeps, upload
from services.upload.store import UploadBucket


class UploadSettings(ObjectServiceSettings, UploadRules):
    pass


async def build(nc: NATS, settings: UploadSettings, clock: Clock) -> ServiceParts:
    bucket = UploadBucket(nc, settings.upload_bucket, replicas=settings.stream_replicas)
    await bucket.ensure()
    deps = UploadDeps(
        bucket=bucket,
        uploads=UploadClient(nc, timeout=settings.request_timeout),
        max_size=settings.upload_max_size,
        ttl=settings.upload_ttl,
    )
    return ServiceParts([Hosting(upload, deps)])


SERVICE = ObjectService("upload", UploadSettings, build)


def main() -> None:
    run(SERVICE)


if __name__ == "__main__":
    main()
