"""Running an object service: its bootstrap builds the kinds it hosts on one connection; the
same service runs as a process (`run`) or inside a test or benchmark (`running_service`).

    async def build(nc: NATS, settings: RoomSettings, clock: Clock) -> ServiceParts:
        return ServiceParts([Hosting(room, RoomDeps(...))])

    SERVICE = ObjectService("room", RoomSettings, build)

    if __name__ == "__main__":
        run(SERVICE)
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import nats
import uvloop
from nats.aio.client import Client as NATS
from nats.micro.service import Service as MicroService
from pydantic import Field

from services.runtime import logs, metrics, micro, tracing
from services.runtime.admin import AdminResponder
from services.runtime.alarms import AlarmRunner
from services.runtime.host import ObjectHost
from services.runtime.kind import SYSTEM_CLOCK, Clock, ObjectKind
from services.runtime.leases import PartitionLeases, new_replica_id
from services.runtime.metrics import serve_metrics
from services.runtime.micro import EndpointCounts
from services.runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)


class ObjectServiceSettings(RuntimeSettings):
    """Settings of a process that hosts objects."""

    idle_after: float = Field(300.0, gt=0, description="seconds idle before an object is evicted")
    mailbox_limit: int = Field(2000, ge=1, description="queued commands per object before 'overloaded'")
    max_batch: int = Field(500, ge=1, description="commands decided per group commit at most")
    snapshot_every: int = Field(100, ge=1, description="events between snapshots of an object")
    lease_ttl: float = Field(3.0, ge=1, description="seconds a partition lease lives unrenewed")


T = TypeVar("T", bound=ObjectServiceSettings)


@dataclass(frozen=True)
class Hosting:
    """A kind, with what its handlers need."""

    kind: ObjectKind[Any, Any]
    deps: Any = None


@dataclass
class ServiceParts:
    """What a bootstrap built: the kinds to host, and how to wind down what it started."""

    hostings: Sequence[Hosting]
    # Awaited first when the service stops, while objects and the connection still run
    # (e.g. streams of AI replies, which must tell their rooms they stop).
    stopping: Sequence[Callable[[], Awaitable[None]]] = ()
    # Awaited last, after every object stopped (e.g. an HTTP client).
    closing: Sequence[Callable[[], Awaitable[None]]] = ()


Bootstrap = Callable[[NATS, T, Clock], Awaitable[ServiceParts]]


@dataclass(frozen=True)
class ObjectService(Generic[T]):
    """One service: its name, its settings class, and the bootstrap that builds its kinds."""

    name: str
    settings: type[T]
    build: Bootstrap[T]


async def connect(settings: RuntimeSettings, name: str, **callbacks: Any) -> NATS:
    """Connect to NATS, retrying until a server answers (it may still be starting).

    Pings every `nats_ping_interval` s: a server that is frozen (SIGSTOP) or cut off behind a
    TCP connection that stays open is left after `nats_max_outstanding_pings` + 1 intervals
    (6 s by default, not nats-py's 4-6 min), for another of the URLs; a closed connection is
    left at once. Reconnects forever, 0.5 s apart per server. `callbacks`: nats-py's
    (`reconnected_cb`, `error_cb`, ...)."""
    return await nats.connect(
        servers=[url.strip() for url in settings.nats_url.split(",") if url.strip()],
        name=name,
        max_reconnect_attempts=-1,
        connect_timeout=2,
        allow_reconnect=True,
        reconnect_time_wait=0.5,
        ping_interval=settings.nats_ping_interval,
        max_outstanding_pings=settings.nats_max_outstanding_pings,
        **callbacks,
    )


def version() -> str:
    try:
        return importlib.metadata.version("durachat")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout without install
        return "0.0.0"


async def announce(
    nc: NATS, name: str, endpoints: Sequence[EndpointCounts] = (), **metadata: str
) -> MicroService:
    """Answer the NATS micro service protocol as `durachat-<name>`: `$SRV.PING`, `$SRV.INFO`
    and `$SRV.STATS` (also per name, `$SRV.PING.durachat-room`, and per instance id), so
    `nats micro ls` or any client can see which services are up. `endpoints` are listed in
    INFO and STATS with their counts (services/runtime/micro.py). Stop it before closing."""
    return await micro.add_service(
        nc,
        list(endpoints),
        name=f"durachat-{name}",
        version=version(),
        description=f"durachat {name} service",
        metadata=metadata,
    )


@dataclass
class HostedKind:
    """One kind running in a service: its host, and (when leased) its leases and alarms."""

    host: ObjectHost[Any, Any]
    leases: PartitionLeases | None = None
    alarms: AlarmRunner | None = None


@dataclass
class RunningService:
    """A service's kinds on one connection, each on the partitions this replica owns."""

    nc: NATS
    settings: ObjectServiceSettings
    clock: Clock = SYSTEM_CLOCK
    lease: bool = True  # False: own every partition at once, without leases (tests only)
    replica_id: str = field(default_factory=new_replica_id)
    kinds: dict[str, HostedKind] = field(default_factory=dict)

    def host(self, kind: str) -> ObjectHost[Any, Any]:
        return self.kinds[kind].host

    async def start(self, hostings: Sequence[Hosting]) -> None:
        for hosting in hostings:
            self.kinds[hosting.kind.name] = await self._start_kind(hosting)

    async def _start_kind(self, hosting: Hosting) -> HostedKind:
        settings = self.settings
        hosted = HostedKind(
            ObjectHost(
                self.nc,
                hosting.kind,
                hosting.deps,
                clock=self.clock,
                stream_replicas=settings.stream_replicas,
                mailbox_limit=settings.mailbox_limit,
                max_batch=settings.max_batch,
                idle_after=settings.idle_after,
                snapshot_every=settings.snapshot_every,
                may_write=lambda partition: hosted.leases is None or hosted.leases.valid(partition),
                on_lease_lapsed=lambda partition: hosted.leases.lost(partition),  # type: ignore[union-attr]
            )
        )
        name = hosting.kind.name
        if not self.lease:
            await hosted.host.start(range(settings.partitions))
        else:
            await hosted.host.start([])
            hosted.leases = PartitionLeases(
                self.nc,
                name,
                settings.partitions,
                on_acquired=hosted.host.own,
                on_released=hosted.host.release,
                ttl=settings.lease_ttl,
                replica_id=self.replica_id,
                replicas=settings.stream_replicas,
            )
            await hosted.leases.start()
        if hosting.kind.wake_at is not None:
            hosted.alarms = AlarmRunner(self.nc, name, request_timeout=settings.request_timeout)
            await hosted.alarms.start()
        return hosted

    async def stop(self) -> None:
        """Hand every partition over and finish the commands taken."""
        for hosted in self.kinds.values():
            if hosted.alarms is not None:
                await hosted.alarms.stop()
        for hosted in self.kinds.values():
            if hosted.leases is not None:
                await hosted.leases.stop()
        for hosted in self.kinds.values():
            await hosted.host.stop()  # every reply and broadcast of taken commands is out


@asynccontextmanager
async def running_service(
    service: ObjectService[T],
    settings: T,
    *,
    clock: Clock = SYSTEM_CLOCK,
    lease: bool = True,
    nc: NATS | None = None,
    metadata: dict[str, str] | None = None,
) -> AsyncIterator[RunningService]:
    """`service` built and running in this process until the block ends.

    With `lease=False` (tests) it owns every partition at once, without leases: no other
    replica of the service may run against the same server. `metadata` goes into its
    `$SRV.INFO` (e.g. where it serves metrics)."""
    own_connection = nc is None
    nc = nc or await connect(settings, f"durachat-{service.name}")
    try:
        parts = await service.build(nc, settings, clock)
        running = RunningService(nc, settings, clock, lease)
        metrics.watch_connection(nc)
        logs.set_replica(running.replica_id)
        announced: MicroService | None = None
        admin = AdminResponder(nc, running.replica_id, running.kinds)
        try:
            await running.start(parts.hostings)
            await admin.start()  # read-only views of its objects (durachat-replay objects)
            announced = await announce(
                nc, service.name,
                [*(hosted.host.counts for hosted in running.kinds.values()), *admin.counts.values()],
                replica=running.replica_id, kinds=",".join(running.kinds), **(metadata or {}),
            )
            log.info("%s replica %s is up", service.name, running.replica_id)
            yield running
        finally:
            if announced is not None:
                await announced.stop()
            await admin.stop()
            log.info("%s service stopping: handing partitions over", service.name)
            for stop in parts.stopping:
                await stop()
            await running.stop()
            for close in parts.closing:
                await close()
            metrics.unwatch_connection(nc)
    finally:
        if own_connection:
            # Flush and close rather than drain: a drain waited forever on the lease
            # watcher's and the alarm consumer's subscriptions, whose tasks are stopped.
            await nc.flush(timeout=5)
            await nc.close()


async def serve(service: ObjectService[T], settings: T) -> None:
    """Run `service` until SIGTERM or SIGINT; then hand every partition over and drain."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    url = serve_metrics(service.name)
    tracing.setup(service.name)  # only with an OTLP endpoint configured
    try:
        async with running_service(service, settings, metadata={"metrics": url} if url else None):
            await stopping.wait()
    finally:
        tracing.shutdown()  # exports the spans still queued


def configure_logging(name: str = "") -> None:
    logs.configure(name)  # JSON lines off a terminal (services/runtime/logs.py)


def run(service: ObjectService[Any]) -> None:
    """The process entry point of an object service."""
    configure_logging(service.name)
    uvloop.run(serve(service, service.settings()))  # as the gateway runs under uvicorn
