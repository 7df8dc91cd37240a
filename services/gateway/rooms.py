"""The gateway's side of the room objects: commands over NATS, and fan-out of broadcasts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from contracts.common import Command, ErrorCode, ErrorReply
from contracts.room import RoomReply, room_reply, room_update
from contracts.subjects import ROOM, command_subject, out_subject
from services.gateway.protocol import update_frame
from services.gateway.sockets import OutFrame

log = logging.getLogger(__name__)

UNAVAILABLE = ErrorReply(code=ErrorCode.UNAVAILABLE, message="The room is unavailable; try again.")


class RoomClient:
    """Sends commands to room objects.

    A command that times out, finds no owner (a room service restarting) or is refused as
    retryable (busy, conflict) is sent again with the same command id until the deadline.
    """

    def __init__(self, nc: NATS, timeout: float, attempt_timeout: float = 2.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self.attempt_timeout = min(attempt_timeout, timeout)

    async def send(self, room: str, command: Command) -> RoomReply:
        subject = command_subject(ROOM, room)
        data = command.model_dump_json().encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        backoff = 0.02
        reply: RoomReply = UNAVAILABLE
        while True:
            remaining = deadline - loop.time()
            try:
                msg = await self.nc.request(
                    subject, data, timeout=max(0.001, min(self.attempt_timeout, remaining))
                )
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                reply = UNAVAILABLE
            else:
                try:
                    reply = room_reply.validate_json(msg.data)
                except ValidationError:
                    log.error("room %s sent a reply outside the contract: %r", room, msg.data[:200])
                    return UNAVAILABLE
                if not (isinstance(reply, ErrorReply) and reply.retryable):
                    return reply
            if loop.time() + backoff >= deadline:
                return reply
            await asyncio.sleep(backoff)  # back off before sending the same command id again
            backoff = min(backoff * 2, 0.5)


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
        frame = OutFrame(update_frame(update))
        for deliver in list(self.listeners.values()):
            deliver(update.version, frame)
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


class RoomFanouts:
    """Subscribes to a room's broadcasts while at least one local socket is in it."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.rooms: dict[str, RoomFanout] = {}

    async def attach(
        self, room: str, listener_id: int, deliver: Callable[[int, OutFrame], None]
    ) -> RoomFanout:
        fanout = self.rooms.get(room)
        if fanout is None:
            fanout = self.rooms[room] = RoomFanout(room)
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
