"""This gateway's liveness, as room objects see it (contracts/gateways.py): a heartbeat key
with a TTL in `gateways`, and an entry in `gateway-rooms` for every room it has had a
socket in, written before that socket joins. When the heartbeat stops, the room service
makes the members this gateway held leave.

A gateway that was only paused or cut off past its TTL finds out from its next heartbeat
(renewed by compare-and-set on its revision): it takes a new id, and joins its members
again under it, so whatever the sweep of the old id dropped comes back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
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

_WRONG_LAST_SEQUENCE = 10071


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
        self._revision: int | None = None
        self.joined: dict[tuple[str, str], str] = {}  # (room, session id) -> member name
        self.lapses = 0

    _rejoin: Callable[[], Awaitable[None]] | None = None

    def on_lapse(self, rejoin: Callable[[], Awaitable[None]]) -> None:
        """`rejoin` is awaited after a lapse, once the new id is alive."""
        self._rejoin = rejoin

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
        headers = {}
        if self._revision is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(self._revision)
        try:
            ack = await self.nc.jetstream().publish(
                f"$KV.{GATEWAYS_BUCKET}.{self.gateway_id}", b"alive", headers=headers,
                msg_ttl=self.ttl,
            )
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != _WRONG_LAST_SEQUENCE:
                raise
            await self._lapsed()
            return
        self._revision = ack.seq

    async def _lapsed(self) -> None:
        """Our heartbeat expired while we lived: rooms may drop (or have dropped) our members.
        Go on as a new gateway, and join every member again under the new id."""
        old, self.gateway_id = self.gateway_id, new_gateway_id()
        self.lapses += 1
        log.warning("gateway %s: heartbeat lapsed; going on as %s and rejoining %d member(s)",
                    old, self.gateway_id, len(self.joined))
        self._revision = None
        self._noted.clear()
        await self._beat()
        if self._rejoin is not None:
            await self._rejoin()

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
