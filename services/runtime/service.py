"""Running an object service as a process: connect, host the partitions, stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal

import nats

from services.runtime.host import ObjectBehaviour, ObjectHost
from services.runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)


class ObjectServiceSettings(RuntimeSettings):
    """Settings of a process that hosts objects."""

    idle_after: float = 300.0
    mailbox_limit: int = 2000
    max_batch: int = 500


async def connect(settings: RuntimeSettings, name: str) -> nats.NATS:
    """Connect to NATS, retrying until the server answers (it may still be starting)."""
    return await nats.connect(
        servers=settings.nats_url.split(","),
        name=name,
        max_reconnect_attempts=-1,
        connect_timeout=2,
        allow_reconnect=True,
    )


async def serve(behaviour: ObjectBehaviour, settings: ObjectServiceSettings) -> None:
    """Host `behaviour`'s objects on every partition until SIGTERM or SIGINT, then drain."""
    nc = await connect(settings, f"durachat-{behaviour.kind}")
    host = ObjectHost(
        nc,
        behaviour,
        stream_replicas=settings.stream_replicas,
        mailbox_limit=settings.mailbox_limit,
        max_batch=settings.max_batch,
        idle_after=settings.idle_after,
    )
    # Until partition leases arrive (the object-runtime issue), one process owns them all.
    await host.start(range(settings.partitions))
    log.info("%s service owns partitions 0..%d", behaviour.kind, settings.partitions - 1)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("%s service stopping: finishing in-flight commands", behaviour.kind)
    await host.stop()
    await nc.drain()


def run(behaviour: ObjectBehaviour, settings: ObjectServiceSettings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(behaviour, settings))
