"""This gateway's liveness, as room objects see it (contracts/gateways.py): a heartbeat key
with a TTL in `gateways`, and an entry in `gateway-rooms` for every room it has had a
socket in, written before that socket joins. When the heartbeat stops, the room service
makes the members this gateway held leave."""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from contracts.gateways import (
    GATEWAYS_BUCKET,
    gateway_room_key,
    gateway_rooms_config,
    gateways_config,
    open_bucket,
)
from services.runtime.leases import new_replica_id

log = logging.getLogger(__name__)


def new_gateway_id() -> str:
    return f"gw-{new_replica_id()}"


class GatewayPresence:
    """Keeps this gateway's heartbeat up and records the rooms it has sockets in."""

    def __init__(self, nc: NATS, ttl: int, gateway_id: str | None = None, replicas: int = 1) -> None:
        self.nc = nc
        self.ttl = max(1, int(ttl))
        self.gateway_id = gateway_id or new_gateway_id()
        self.replicas = replicas
        self.live: KeyValue | None = None
        self.rooms: KeyValue | None = None
        self._noted: set[str] = set()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.live = await open_bucket(self.nc, gateways_config(self.replicas))
        self.rooms = await open_bucket(self.nc, gateway_rooms_config(self.replicas))
        await self._beat()  # alive before any room hears of us
        self._task = asyncio.create_task(self._run(), name="gateway heartbeat")

    async def stop(self) -> None:
        """Leave: the room service then drops whatever members we still hold at once."""
        if self._task is not None:
            self._task.cancel()
        try:
            if self.live is not None:
                await self.live.delete(self.gateway_id)
        except (nats.errors.Error, TimeoutError):
            pass

    async def note_room(self, room: str) -> None:
        """Record that our sockets may join `room` (before the first one does)."""
        if room in self._noted or self.rooms is None:
            return
        try:
            await self.rooms.put(gateway_room_key(self.gateway_id, room), room.encode())
            self._noted.add(room)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("could not record room %r for gateway %s: %r", room, self.gateway_id, exc)

    async def _beat(self) -> None:
        await self.nc.jetstream().publish(
            f"$KV.{GATEWAYS_BUCKET}.{self.gateway_id}", b"alive", msg_ttl=self.ttl
        )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 4)
            try:
                await self._beat()
            except nats.errors.NoRespondersError:
                log.warning("bucket %s is gone; making it again", GATEWAYS_BUCKET)
                try:
                    self.live = await open_bucket(self.nc, gateways_config(self.replicas))
                except (nats.errors.Error, TimeoutError) as exc:
                    log.warning("gateway liveness: %r", exc)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("gateway heartbeat failed (%r); retrying", exc)
