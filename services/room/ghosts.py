"""Ghost members: members held by a gateway that died are made to leave their rooms.

Gateways keep a heartbeat in bucket `gateways` and list the rooms they have sockets in,
in `gateway-rooms` (contracts/gateways.py). A sweep, run by every room replica when a
heartbeat disappears and every `sweep_every` seconds (so also at start, for gateways that
died while no room service ran), sends each room of a gateway without a heartbeat
`DropGateway`, then removes the entry. A repeated drop does nothing, so replicas may
sweep the same gateway at once.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from contracts.common import ErrorReply
from contracts.gateways import (
    GATEWAY_ROOMS_BUCKET,
    GATEWAYS_BUCKET,
    gateway_rooms_config,
    gateways_config,
    open_bucket,
)
from contracts.room import DropGateway, RoomClient
from services.runtime.eventstore import DirectGetError, direct_get

log = logging.getLogger(__name__)

PURGED_MARKER_TTL = 60.0  # seconds a removed entry's marker stays (it is only a marker)


class GatewayReaper:
    """Sweeps the members of dead gateways out of their rooms."""

    def __init__(self, nc: NATS, rooms: RoomClient, sweep_every: float, replicas: int = 1) -> None:
        self.nc = nc
        self.room_client = rooms
        self.sweep_every = sweep_every
        self.replicas = replicas
        self.listed: KeyValue | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._watcher: KeyValue.KeyWatcher | None = None

    async def start(self) -> None:
        live = await open_bucket(self.nc, gateways_config(self.replicas))
        self.listed = await open_bucket(self.nc, gateway_rooms_config(self.replicas))
        self._watcher = await live.watchall()
        self._tasks = [
            asyncio.create_task(self._watch(self._watcher), name="gateway heartbeats watch"),
            asyncio.create_task(self._run(), name="gateway sweep"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except (nats.errors.Error, TimeoutError):
                pass

    async def _watch(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None and (entry.operation in ("DEL", "PURGE") or not entry.value):
                self._wake.set()  # a heartbeat expired or was removed: sweep now

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.sweep()
            except (DirectGetError, nats.errors.Error, TimeoutError) as exc:
                log.warning("sweeping dead gateways failed (%r); retrying", exc)
            try:
                await asyncio.wait_for(self._wake.wait(), self.sweep_every)
            except TimeoutError:
                pass

    async def sweep(self) -> list[str]:
        """Drop the members of every listed gateway without a heartbeat; the rooms done."""
        prefix = f"$KV.{GATEWAY_ROOMS_BUCKET}."
        listed: dict[str, list[tuple[str, str]]] = {}
        async for message in direct_get(self.nc, f"KV_{GATEWAY_ROOMS_BUCKET}", subject=prefix + ">"):
            if message.data:  # not a removed entry's marker
                key = message.subject[len(prefix):]
                listed.setdefault(key.split(".", 1)[0], []).append((key, message.data.decode()))
        done = []
        for gateway, entries in listed.items():
            if await self._alive(gateway):
                continue
            for key, room in entries:
                reply = await self.room_client.send(room, DropGateway(gateway=gateway))
                if isinstance(reply, ErrorReply):
                    log.warning("room %r did not drop gateway %s: %s", room, gateway, reply.message)
                    continue  # the next sweep tries again
                assert self.listed is not None
                await self.listed.purge(key, msg_ttl=PURGED_MARKER_TTL)
                done.append(room)
            log.info("gateway %s is gone: dropped its members from %d room(s)", gateway, len(entries))
        return done

    async def _alive(self, gateway: str) -> bool:
        try:
            msg = await self.nc.jetstream().get_msg(
                f"KV_{GATEWAYS_BUCKET}", subject=f"$KV.{GATEWAYS_BUCKET}.{gateway}", direct=True
            )
        except nats.js.errors.NotFoundError:
            return False
        return bool(msg.data)
