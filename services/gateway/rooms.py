"""The gateway's side of the room objects: commands over NATS, and fan-out of broadcasts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from contracts.common import Command, ErrorReply
from contracts.room import JoinRoom, LeaveRoom, RoomClient, RoomReply, RoomUpdate, room_update
from contracts.subjects import ROOM, event_subject, out_subject
from services.gateway.liveness import GatewayPresence
from services.gateway.protocol import update_frames
from services.gateway.sockets import OutFrame
from services.room.handlers import broadcast as room_broadcast
from services.runtime import metrics, tracing
from services.runtime.eventstore import DirectGetError, ObjectEventStore
from services.runtime.host import COMMIT_HEADER, PREVIOUS_HEADER
from services.runtime.micro import EndpointCounts

log = logging.getLogger(__name__)

# the broadcasts this process wrote to its sockets, in `$SRV.STATS` (services/runtime/micro.py)
FANOUT_COUNTS = EndpointCounts("fanout", f"out.{ROOM}.*")


class RoomFanout:
    """One room's broadcasts, received once per gateway and handed to every local socket,
    each once and in version order, with no gaps.

    Broadcasts go over core NATS, which drops messages to a connection that is reconnecting
    or too slow. Each broadcast names its commit (the stream sequence) and the version of the
    room's broadcast before it; when that is not the last one delivered here (or is not
    known: the room was just loaded by a new owner), the missing commits are read from the
    room's event stream and their broadcasts delivered first. After a reconnect, or when a
    broadcast someone waits for is late, the stream is checked for commits not seen yet."""

    def __init__(self, room: str, store: ObjectEventStore | None = None) -> None:
        self.room = room
        self.store = store
        self.listeners: dict[int, Callable[[int, OutFrame], None]] = {}
        self.version = 0  # the last version delivered (or known to have nothing to deliver)
        self.commit = 0  # the stream sequence of the commit `version` is in (0: unknown)
        self.subscription: Subscription | None = None
        self.live = asyncio.Event()  # set once the subscription is registered on the server
        self.based = asyncio.Event()  # set once `version` and `commit` are read (or given up)
        self.repairs = 0  # times missing commits were read from the stream
        self.repaired = 0  # broadcasts delivered from the stream
        self._advanced = asyncio.Condition()
        self._turn = asyncio.Lock()  # one delivery at a time: order is kept
        self._catching_up: asyncio.Task | None = None

    async def start_from_stream(self) -> None:
        """Start from the room's last stored commit: everything up to it is in the state a
        socket reads after this (GetRoom); a commit after it is watched for."""
        try:
            if self.store is not None:
                commit = await self._last_commit()
                if commit is not None:
                    self.commit, self.version = commit
        finally:
            self.based.set()

    async def _last_commit(self) -> tuple[int, int] | None:
        assert self.store is not None
        subject = event_subject(ROOM, self.room)
        try:
            msg = await self.store.js.get_last_msg(self.store.stream, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("room %s: last commit not read (%r); watching from the first broadcast",
                        self.room, exc)
            return None
        events = self.store.decode(msg.data or b"")
        return (msg.seq or 0), (events[-1].originator_version if events else 0)

    async def on_message(self, msg: Msg) -> None:
        try:
            update = room_update.validate_json(msg.data)
        except ValidationError as exc:
            log.error("dropped a broadcast of room %s outside the contract: %s", self.room, exc)
            return
        await self.based.wait()
        headers = msg.headers or {}
        async with self._turn:
            before = self.version
            await self._take(update, headers)
        if self.version > before:  # whoever waits for a version (a posting socket) is told
            await self._notify()

    async def _take(self, update: RoomUpdate, headers: dict[str, str]) -> None:
        if update.version <= self.version:
            return  # said again by a new owner after a failover, or read from the stream
        commit = _int(headers.get(COMMIT_HEADER))
        previous = _int(headers.get(PREVIOUS_HEADER))
        if commit is not None and self.store is not None and (
            previous is None or previous > self.version
        ):
            await self._repair(through=commit)
            if update.version <= self.version:
                return
        self._deliver(update, commit, headers)

    def _deliver(self, update: RoomUpdate, commit: int | None, headers: dict[str, str] | None = None) -> None:
        started = time.perf_counter()
        listeners = list(self.listeners.values())
        span = (tracing.start_consumer("process out.room.{key}", headers)
                if tracing.ENABLED and headers else None)
        for text in update_frames(update):
            frame = OutFrame(text)
            for deliver in listeners:
                deliver(update.version, frame)
        elapsed = time.perf_counter() - started
        metrics.BROADCAST_WRITE_SECONDS.observe(elapsed)
        FANOUT_COUNTS.record(int(elapsed * 1e9))
        metrics.BROADCAST_SOCKETS.observe(len(listeners))
        tracing.end(span, **{"durachat.sockets": len(listeners), "durachat.version": update.version})
        self.version = update.version
        if commit is not None:
            self.commit = commit

    async def _repair(self, through: int | None) -> None:
        """Deliver the broadcasts of every commit after the last one delivered (through the
        commit `through`, which the stream may be a moment behind on a follower)."""
        assert self.store is not None
        self.repairs += 1
        for attempt in range(20):
            try:
                commits = await self.store.read(self.room, after=self.commit)
            except (DirectGetError, nats.errors.Error, TimeoutError) as exc:
                log.warning("room %s: missing commits not read (%r)", self.room, exc)
                commits = []
            for commit in commits:
                for event in commit.events:
                    update = room_broadcast(event)
                    if update is not None and update.version > self.version:  # type: ignore[attr-defined]
                        self._deliver(update, commit.sequence)  # type: ignore[arg-type]
                        self.repaired += 1
                    elif event.originator_version > self.version:
                        self.version = event.originator_version
                self.commit = max(self.commit, commit.sequence)
            if through is None or self.commit >= through:
                return
            await asyncio.sleep(0.05 * (attempt + 1))
        log.warning("room %s: commit %s not readable yet; delivering on", self.room, through)

    def catch_up(self) -> None:
        """Check the stream for commits not delivered yet (after a reconnect, a slow-consumer
        drop, or a broadcast that is late), in the background, one check at a time."""
        if self.store is None or (self._catching_up and not self._catching_up.done()):
            return
        self._catching_up = asyncio.create_task(self._catch_up(), name=f"catch up {self.room}")

    async def _catch_up(self) -> None:
        await self.based.wait()
        last = await self._last_commit()
        if last is None or last[0] <= self.commit:
            return
        async with self._turn:
            await self._repair(through=last[0])
        await self._notify()

    async def _notify(self) -> None:
        async with self._advanced:
            self._advanced.notify_all()

    async def delivered(self, version: int, timeout: float) -> bool:
        """Wait until broadcasts up to `version` were handed to the listeners (a broadcast
        still missing after a moment is read from the stream)."""
        deadline = asyncio.get_running_loop().time() + timeout
        wait = 0.5
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            try:
                async with self._advanced:
                    await asyncio.wait_for(
                        self._advanced.wait_for(lambda: self.version >= version), min(wait, left)
                    )
                return True
            except TimeoutError:
                self.catch_up()
                wait = min(wait * 2, 2.0)

    def stop(self) -> None:
        if self._catching_up is not None:
            self._catching_up.cancel()


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


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

    def __init__(
        self, nc: NATS, presence: GatewayPresence | None = None, repair: bool = True
    ) -> None:
        self.nc = nc
        self.presence = presence
        self.rooms: dict[str, RoomFanout] = {}
        # Where missing broadcasts are read from (None: no repair, e.g. a test's fake bus).
        self.store = ObjectEventStore(nc, ROOM) if repair else None

    def catch_up(self) -> None:
        """Every room checks its stream for commits it has not delivered (the connection
        reconnected, or dropped messages as a slow consumer)."""
        for fanout in list(self.rooms.values()):
            fanout.catch_up()

    @property
    def gateway_id(self) -> str | None:
        """This gateway's id, which a join names (None: no liveness, e.g. in a test)."""
        return self.presence.gateway_id if self.presence is not None else None

    async def attach(
        self, room: str, listener_id: int, deliver: Callable[[int, OutFrame], None]
    ) -> RoomFanout:
        fanout = self.rooms.get(room)
        if fanout is None:
            fanout = self.rooms[room] = RoomFanout(room, self.store)
            if self.presence is not None:
                # Before any of our sockets joins it: if we die, the room hears of it.
                await self.presence.note_room(room)
            fanout.subscription = await self.nc.subscribe(out_subject(ROOM, room), cb=fanout.on_message)
            # The subscription must be live on the server before the caller reads the room's
            # state, or a broadcast in between would be missed.
            await self.nc.flush()
            await fanout.start_from_stream()
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
            fanout.stop()
            if fanout.subscription is not None:
                await fanout.subscription.unsubscribe()
