"""The gateway's side of the room objects: commands over NATS, and fan-out of broadcasts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from contracts.common import Command, ErrorReply
from contracts.room import JoinRoom, LeaveRoom, RoomClient, RoomReply, room_update
from contracts.subjects import ROOM, out_subject
from services.gateway.liveness import GatewayPresence
from services.gateway.protocol import update_frames
from services.gateway.sockets import OutFrame
from services.runtime import metrics, tracing

log = logging.getLogger(__name__)


class RoomFanout:
    """One room's broadcasts, received once per gateway and handed to every local socket."""

    def __init__(self, room: str) -> None:
        self.room = room
        self.listeners: dict[int, Callable[[int, OutFrame], None]] = {}
        self.version = 0
        self.subscription: Subscription | None = None
        self.live = asyncio.Event()  # set once the subscription is registered on the server
        self._advanced = asyncio.Condition()

    async def on_message(self, msg: Msg) -> None:
        try:
            update = room_update.validate_json(msg.data)
        except ValidationError as exc:
            log.error("dropped a broadcast of room %s outside the contract: %s", self.room, exc)
            return
        if update.version <= self.version:
            return  # said again by a new owner after a failover; already delivered
        started = time.perf_counter()
        listeners = list(self.listeners.values())
        span = tracing.start_consumer("process out.room.{key}", msg.headers) if tracing.ENABLED else None
        for text in update_frames(update):
            frame = OutFrame(text)
            for deliver in listeners:
                deliver(update.version, frame)
        metrics.BROADCAST_WRITE_SECONDS.observe(time.perf_counter() - started)
        metrics.BROADCAST_SOCKETS.observe(len(listeners))
        tracing.end(span, **{"durachat.sockets": len(listeners), "durachat.version": update.version})
        self.version = update.version
        async with self._advanced:
            self._advanced.notify_all()

    async def delivered(self, version: int, timeout: float) -> bool:
        """Wait until broadcasts up to `version` were handed to the listeners."""
        try:
            async with self._advanced:
                await asyncio.wait_for(
                    self._advanced.wait_for(lambda: self.version >= version), timeout
                )
            return True
        except TimeoutError:
            return False


class GatewayRoomClient(RoomClient):
    """The gateway's room client: it also keeps the members its sockets joined, so that a
    gateway whose heartbeat lapsed (paused, cut off) can join them again (liveness.py)."""

    def __init__(self, nc: NATS, timeout: float, presence: GatewayPresence) -> None:
        super().__init__(nc, timeout)
        self.presence = presence
        presence.on_lapse(self.rejoin)

    async def send(self, key: str, command: Command, timeout: float | None = None) -> RoomReply:
        if isinstance(command, LeaveRoom):  # forgotten first: never rejoin a closed socket
            self.presence.joined.pop((key, command.session_id), None)
        reply = await super().send(key, command, timeout)
        if isinstance(command, JoinRoom) and not isinstance(reply, ErrorReply):
            self.presence.joined[(key, command.session_id)] = command.name
        return reply

    async def rejoin(self) -> None:
        for (room, session_id), name in list(self.presence.joined.items()):
            await self.presence.note_room(room)
            join = JoinRoom(session_id=session_id, name=name, gateway=self.presence.gateway_id)
            reply = await super().send(room, join)
            if isinstance(reply, ErrorReply):
                log.warning("could not rejoin %s to room %r: %s", name, room, reply.message)


class RoomFanouts:
    """Subscribes to a room's broadcasts while at least one local socket is in it."""

    def __init__(self, nc: NATS, presence: GatewayPresence | None = None) -> None:
        self.nc = nc
        self.presence = presence
        self.rooms: dict[str, RoomFanout] = {}

    @property
    def gateway_id(self) -> str | None:
        """This gateway's id, which a join names (None: no liveness, e.g. in a test)."""
        return self.presence.gateway_id if self.presence is not None else None

    async def attach(
        self, room: str, listener_id: int, deliver: Callable[[int, OutFrame], None]
    ) -> RoomFanout:
        fanout = self.rooms.get(room)
        if fanout is None:
            fanout = self.rooms[room] = RoomFanout(room)
            if self.presence is not None:
                # Before any of our sockets joins it: if we die, the room hears of it.
                await self.presence.note_room(room)
            fanout.subscription = await self.nc.subscribe(out_subject(ROOM, room), cb=fanout.on_message)
            # The subscription must be live on the server before the caller reads the room's
            # state, or a broadcast in between would be missed.
            await self.nc.flush()
            fanout.live.set()
        fanout.listeners[listener_id] = deliver
        await fanout.live.wait()
        return fanout

    async def detach(self, room: str, listener_id: int) -> None:
        fanout = self.rooms.get(room)
        if fanout is None:
            return
        fanout.listeners.pop(listener_id, None)
        if not fanout.listeners:
            del self.rooms[room]
            if fanout.subscription is not None:
                await fanout.subscription.unsubscribe()
