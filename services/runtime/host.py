"""Hosting objects: partition subscriptions, one mailbox per key, group commit, output gate.

A service gives an `ObjectBehaviour` (parse a command, decide against the aggregate); the
`ObjectHost` does the rest:

- it subscribes to the partitions it owns (`cmd.<kind>.<partition>.*`);
- every key gets a mailbox, processed by one task, one batch at a time, so an object never
  runs two commands at once while other objects proceed;
- a batch is every command waiting in the mailbox (up to `max_batch`): each is decided in
  order, then all their events are appended as ONE commit (group commit);
- only after JetStream acknowledges the commit are the broadcasts published and the replies
  sent (the output gate), in command order;
- a full mailbox answers `overloaded` at once instead of queueing without bound;
- an idle mailbox is dropped with its aggregate (hibernation), rebuilt on the next command.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar
from uuid import NAMESPACE_OID, uuid5

from eventsourcing.domain import Aggregate
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ValidationError

from contracts.common import ErrorCode, ErrorReply
from contracts.keys import InvalidKey, key_from_token
from contracts.subjects import out_subject, partition_filter
from services.runtime.alarms import ALARM_HEADER, AlarmSchedule
from services.runtime.eventstore import AppendConflict, ObjectEventStore

log = logging.getLogger(__name__)

A = TypeVar("A", bound=Aggregate)


class ObjectBehaviour(Protocol[A]):
    """The domain side of an object kind: all a service writes to host its objects."""

    kind: str
    aggregate_type: type[A]

    def parse(self, data: bytes) -> Any:
        """Validate a command's bytes into a contract (raises pydantic's ValidationError)."""

    def decide(self, key: str, aggregate: A | None, command: Any) -> tuple[A | None, BaseModel]:
        """Apply `command` to the object; return the (possibly new) aggregate and the reply."""

    def broadcast(self, event: Any) -> BaseModel | None:
        """What watchers of the object are told of one stored event (None: nothing)."""

    def alarm_time(self, aggregate: A) -> float | None:
        """When the object wants to be woken (epoch seconds), or None."""

    def on_alarm(self, key: str, aggregate: A | None, at: float) -> tuple[A | None, BaseModel]:
        """The alarm set for `at` is due. It may come more than once, or after the object
        changed its alarm: act only if `at` is still the object's alarm. Raising retries it."""

    # Optional: `async after_commit(nc, key, aggregate, events)`. Called with the events of
    # each commit once it is acknowledged and broadcast (and, when an object is loaded, with
    # its last commit's events: the previous owner may have died before calling it). This is
    # where an object starts work outside itself (asks another object, starts a stream); the
    # work must tolerate being started twice.
    #
    # Optional: `durable(key) -> bool`. A behaviour may define it to keep some objects in
    # memory only: for a key it says False of, the host never reads the object's stream
    # (it starts from None each time the object is woken), and the object's state must have
    # a `collect_events()` that returns nothing (the host stores what it returns).


@dataclass(frozen=True)
class DueAlarm:
    at: float

    @property
    def command_id(self) -> str:
        return f"alarm-{self.at!r}"


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each field that was wrong and why."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def error_bytes(code: ErrorCode, message: str) -> bytes:
    return ErrorReply(code=code, message=message).model_dump_json().encode()


class ObjectMailbox(Generic[A]):
    """One object's queue and cached state; one task drains it, a batch at a time."""

    def __init__(self, host: ObjectHost[A], key: str, partition: int) -> None:
        self.host = host
        self.key = key
        self.partition = partition
        self.out_subject = out_subject(host.behaviour.kind, key)
        self.queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=host.mailbox_limit)
        self.aggregate: A | None = None
        self.sequence = 0  # last subject sequence of the object's stream that we have applied
        self.unsnapshotted = 0  # events applied since the last snapshot
        self.alarm: float | None = None  # the alarm time the object had after the last commit
        self.loaded = False
        self.task = asyncio.create_task(self._run(), name=f"mailbox {host.behaviour.kind}/{key}")

    async def _run(self) -> None:
        host = self.host
        while True:
            try:
                first = await asyncio.wait_for(self.queue.get(), timeout=host.idle_after)
            except TimeoutError:
                if self.queue.empty():  # no await between this check and the removal
                    host._mailboxes.pop(self.key, None)
                    return
                continue
            batch = [first]
            while len(batch) < host.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await self._process(batch)
            except Exception:
                log.exception("mailbox %s/%s failed a batch", host.behaviour.kind, self.key)
                self._forget()
                for msg in batch:
                    await host.reply(msg, error_bytes(ErrorCode.UNAVAILABLE, "Try again."))
            finally:
                for _ in batch:
                    self.queue.task_done()

    def _forget(self) -> None:
        """Drop the cached state; the next command rebuilds it from the stream."""
        self.aggregate = None
        self.sequence = 0
        self.loaded = False

    async def _process(self, batch: list[Msg]) -> None:
        host = self.host
        behaviour = host.behaviour
        if not self.loaded and not host.durable(self.key):
            self.loaded = True  # in memory only: nothing stored to read, nothing owed
        if not self.loaded:
            loaded = await host.store.load(self.key)
            self.aggregate, self.sequence = loaded.aggregate, loaded.sequence
            self.unsnapshotted = loaded.events_after_snapshot
            self.alarm = behaviour.alarm_time(self.aggregate) if self.aggregate else None
            self.loaded = True
            # The previous owner may have stored its last commit and died before broadcasting
            # it: say it again. Watchers drop versions they already have, so this is harmless.
            await self._broadcast(loaded.last_events)
            await self._after_commit(loaded.last_events)

        events: list[Any] = []
        outcomes: list[tuple[Msg, bytes, list[Any]]] = []
        command_ids: list[str] = []
        broken = False
        for msg in batch:
            if broken:
                outcomes.append((msg, error_bytes(ErrorCode.UNAVAILABLE, "Try again."), []))
                continue
            alarm_at = (msg.headers or {}).get(ALARM_HEADER)
            try:
                command = (
                    DueAlarm(float(alarm_at)) if alarm_at is not None else behaviour.parse(msg.data)
                )
            except (ValidationError, ValueError) as exc:
                detail = (
                    describe_validation_error(exc)
                    if isinstance(exc, ValidationError)
                    else f"bad {ALARM_HEADER} header"
                )
                outcomes.append((msg, error_bytes(ErrorCode.BAD_REQUEST, detail), []))
                continue
            try:
                if isinstance(command, DueAlarm):
                    self.aggregate, reply = behaviour.on_alarm(self.key, self.aggregate, command.at)
                else:
                    self.aggregate, reply = behaviour.decide(self.key, self.aggregate, command)
            except Exception:
                # The aggregate may be half-changed: keep what earlier commands decided,
                # drop this command's events, and rebuild the object after this batch.
                log.exception("%s/%s: deciding %r failed", behaviour.kind, self.key, command)
                if self.aggregate is not None:
                    self.aggregate.collect_events()
                broken = True
                outcomes.append((msg, error_bytes(ErrorCode.UNAVAILABLE, "Try again."), []))
                continue
            new_events = self.aggregate.collect_events() if self.aggregate is not None else []
            if new_events:
                events.extend(new_events)
                command_ids.append(str(command.command_id))
            outcomes.append((msg, reply.model_dump_json().encode(), new_events))

        if events and not host.may_write(self.partition):
            # Our lease lapsed (we were paused, or cut off): another replica may own the
            # partition now. Write nothing, answer "try again" (the retry finds the new
            # owner), and step down.
            self._forget()
            host.lease_lapsed(self.partition)
            for msg, _, _ in outcomes:
                await host.reply(msg, error_bytes(ErrorCode.UNAVAILABLE, "Try again."))
            return
        alarm = behaviour.alarm_time(self.aggregate) if self.aggregate is not None else None
        if events and alarm is not None and alarm != self.alarm:
            # Scheduled before the commit that records it: an alarm the object knows of is
            # always scheduled; if the commit fails, the object ignores the stray wake-up.
            await host.alarms.schedule(self.key, alarm)
        if events:
            commit_id = (
                command_ids[0]
                if len(command_ids) == 1
                else str(uuid5(NAMESPACE_OID, ",".join(command_ids)))
            )
            try:
                self.sequence = await host.store.append(
                    self.key, events, expected=self.sequence, commit_id=commit_id
                )
            except AppendConflict:
                log.warning("%s/%s: stale copy, rebuilding", behaviour.kind, self.key)
                self._forget()
                conflict = error_bytes(ErrorCode.CONFLICT, "The object moved on; try again.")
                for msg, _, _ in outcomes:
                    await host.reply(msg, conflict)
                return
        if events and alarm is None and self.alarm is not None:
            await host.alarms.cancel(self.key)
        self.alarm = alarm
        if broken:
            self._forget()

        # Output gate: everything below happens only after the commit is acknowledged.
        for msg, reply, command_events in outcomes:
            await self._broadcast(command_events)
            await host.reply(msg, reply)
        await self._after_commit(events)

        self.unsnapshotted += len(events)
        if self.aggregate is not None and self.unsnapshotted >= host.snapshot_every:
            # After the broadcasts: a snapshot never covers a commit whose broadcast is owed.
            await host.store.save_snapshot(self.key, self.aggregate, self.sequence)
            self.unsnapshotted = 0

    async def _after_commit(self, events: list[Any]) -> None:
        after_commit = self.host.after_commit
        if events and after_commit is not None:
            try:
                await after_commit(self.host.nc, self.key, self.aggregate, events)
            except Exception:
                log.exception("%s/%s: after_commit failed", self.host.behaviour.kind, self.key)

    async def _broadcast(self, events: list[Any]) -> None:
        for event in events:
            update = self.host.behaviour.broadcast(event)
            if update is not None:
                await self.host.nc.publish(self.out_subject, update.model_dump_json().encode())


class ObjectHost(Generic[A]):
    """Hosts the objects of one kind on the partitions this process owns."""

    def __init__(
        self,
        nc: NATS,
        behaviour: ObjectBehaviour[A],
        *,
        stream_replicas: int = 1,
        mailbox_limit: int = 2000,
        max_batch: int = 500,
        idle_after: float = 300.0,
        snapshot_every: int = 100,
        may_write: Callable[[int], bool] = lambda partition: True,
        on_lease_lapsed: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.nc = nc
        self.may_write = may_write
        self._on_lease_lapsed = on_lease_lapsed
        self.behaviour = behaviour
        self.durable: Callable[[str], bool] = getattr(behaviour, "durable", lambda key: True)
        self.after_commit = getattr(behaviour, "after_commit", None)
        self.store = ObjectEventStore(nc, behaviour.kind, replicas=stream_replicas)
        self.alarms = AlarmSchedule(nc, behaviour.kind, replicas=stream_replicas)
        self.mailbox_limit = mailbox_limit
        self.max_batch = max_batch
        self.idle_after = idle_after
        self.snapshot_every = snapshot_every
        self._subscriptions: dict[int, Subscription] = {}
        self._mailboxes: dict[str, ObjectMailbox[A]] = {}

    @property
    def partitions(self) -> set[int]:
        return set(self._subscriptions)

    def resident(self) -> list[str]:
        """Keys of the objects currently in memory."""
        return list(self._mailboxes)

    async def start(self, partitions: Iterable[int]) -> None:
        await self.store.ensure_stream()
        await self.alarms.ensure_stream()
        for partition in partitions:
            await self.own(partition)

    async def own(self, partition: int) -> None:
        """Start serving one partition."""
        if partition not in self._subscriptions:
            subject = partition_filter(self.behaviour.kind, partition)
            # No queue group: the lease makes us the only live subscriber. A paused ex-owner
            # may still be subscribed; it gets copies it will refuse to write, while this
            # owner answers (a queue group would split requests between us and the zombie).
            self._subscriptions[partition] = await self.nc.subscribe(subject, cb=self._on_command)
            await self.nc.flush()  # serving means the server routes to us from now on

    async def release(self, partition: int) -> None:
        """Stop taking commands for one partition, finish those already taken, and drop its
        objects from memory (the next owner may change them)."""
        sub = self._subscriptions.pop(partition, None)
        if sub is not None:
            await sub.drain()  # delivers what the server already sent us, then unsubscribes
        await self._retire([m for m in self._mailboxes.values() if m.partition == partition])

    async def evict(self, key: str) -> bool:
        """Hibernate object `key` now, as if it had been idle (after its queued commands)."""
        mailbox = self._mailboxes.get(key)
        if mailbox is not None:
            await self._retire([mailbox])
        return mailbox is not None

    def lease_lapsed(self, partition: int) -> None:
        if self._on_lease_lapsed is not None:
            asyncio.create_task(self._on_lease_lapsed(partition))

    async def stop(self) -> None:
        """Release every partition, finish in-flight work, drop all objects."""
        for partition in list(self._subscriptions):
            await self._subscriptions.pop(partition).drain()
        await self._retire(list(self._mailboxes.values()))

    async def _retire(self, mailboxes: list[ObjectMailbox[A]]) -> None:
        """Let each mailbox finish what it holds, then drop it with its object."""
        await asyncio.gather(*(m.queue.join() for m in mailboxes))
        for mailbox in mailboxes:
            mailbox.task.cancel()
            if self._mailboxes.get(mailbox.key) is mailbox:
                del self._mailboxes[mailbox.key]

    async def reply(self, msg: Msg, data: bytes) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, data)

    async def _on_command(self, msg: Msg) -> None:
        _, _, partition, token = msg.subject.split(".", 3)
        try:
            key = key_from_token(token)
        except InvalidKey as exc:
            await self.reply(msg, error_bytes(ErrorCode.BAD_REQUEST, str(exc)))
            return
        mailbox = self._mailboxes.get(key)
        if mailbox is None:
            mailbox = self._mailboxes[key] = ObjectMailbox(self, key, int(partition))
        try:
            mailbox.queue.put_nowait(msg)
        except asyncio.QueueFull:
            await self.reply(
                msg, error_bytes(ErrorCode.OVERLOADED, f"{self.behaviour.kind} {key} is overloaded.")
            )
