"""Running an object service as a process: connect, host the partitions, stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import nats
import uvloop
from nats.aio.client import Client as NATS
from pydantic import Field

from services.runtime.alarms import AlarmRunner
from services.runtime.host import ObjectBehaviour, ObjectHost
from services.runtime.leases import PartitionLeases
from services.runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)


class ObjectServiceSettings(RuntimeSettings):
    """Settings of a process that hosts objects."""

    idle_after: float = Field(300.0, gt=0, description="seconds idle before an object is evicted")
    mailbox_limit: int = Field(2000, ge=1, description="queued commands per object before 'overloaded'")
    max_batch: int = Field(500, ge=1, description="commands decided per group commit at most")
    snapshot_every: int = Field(100, ge=1, description="events between snapshots of an object")
    lease_ttl: float = Field(3.0, ge=1, description="seconds a partition lease lives unrenewed")


async def connect(settings: RuntimeSettings, name: str) -> nats.NATS:
    """Connect to NATS, retrying until the server answers (it may still be starting)."""
    return await nats.connect(
        servers=settings.nats_url.split(","),
        name=name,
        max_reconnect_attempts=-1,
        connect_timeout=2,
        allow_reconnect=True,
    )


async def serve(
    behaviour: ObjectBehaviour,
    settings: ObjectServiceSettings,
    *,
    on_connected: Callable[[NATS], None] | None = None,
    on_stopping: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Host `behaviour`'s objects on the partitions this replica leases, until SIGTERM or
    SIGINT; then hand every partition over and drain.

    `on_connected` gets the connection before any object runs; `on_stopping` is awaited first
    when the service stops, while the connection and the partitions are still there."""
    nc = await connect(settings, f"durachat-{behaviour.kind}")
    if on_connected is not None:
        on_connected(nc)
    leases: PartitionLeases | None = None

    def may_write(partition: int) -> bool:
        return leases is not None and leases.valid(partition)

    async def lease_lapsed(partition: int) -> None:
        await leases.lost(partition)

    host = ObjectHost(
        nc,
        behaviour,
        stream_replicas=settings.stream_replicas,
        mailbox_limit=settings.mailbox_limit,
        max_batch=settings.max_batch,
        idle_after=settings.idle_after,
        snapshot_every=settings.snapshot_every,
        may_write=may_write,
        on_lease_lapsed=lease_lapsed,
    )
    await host.start([])
    leases = PartitionLeases(
        nc,
        behaviour.kind,
        settings.partitions,
        on_acquired=host.own,
        on_released=host.release,
        ttl=settings.lease_ttl,
        replicas=settings.stream_replicas,
    )
    await leases.start()
    alarms = AlarmRunner(nc, behaviour.kind, request_timeout=settings.request_timeout)
    await alarms.start()
    log.info("%s replica %s is up", behaviour.kind, leases.replica_id)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("%s service stopping: handing partitions over", behaviour.kind)
    if on_stopping is not None:
        await on_stopping()
    await alarms.stop()
    await leases.stop()
    await host.stop()  # every reply and broadcast of taken commands is published by now
    # Flush and close rather than drain: a drain waited forever on the lease watcher's and
    # the alarm consumer's subscriptions, whose tasks are already stopped.
    await nc.flush(timeout=5)
    await nc.close()


def run(behaviour: ObjectBehaviour, settings: ObjectServiceSettings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvloop.run(serve(behaviour, settings))  # as the gateway runs under uvicorn
