"""Hosting one object kind: partition subscriptions, one mailbox per key, group commit,
output gate.

A service declares an `ObjectKind` (services/runtime/kind.py); the `ObjectHost` does the rest:

- it subscribes to the partitions it owns (`cmd.<kind>.<partition>.*`);
- every key gets a mailbox, processed by one task, one batch at a time, so an object never
  runs two commands at once while other objects proceed;
- a batch is every command waiting in the mailbox (up to `max_batch`): each is decided in
  order, then all their events are appended as ONE commit (group commit);
- only after JetStream acknowledges the commit are the broadcasts published and the replies
  sent (the output gate), in command order; then the kind's reactions run;
- a full mailbox answers `overloaded` at once instead of queueing without bound;
- an idle mailbox is dropped with its state (hibernation), rebuilt on the next command.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, cast
from uuid import NAMESPACE_OID, uuid5

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.common import ErrorCode, ErrorReply
from contracts.keys import InvalidKey, key_from_token
from contracts.subjects import out_subject, partition_filter
from services.runtime import logs, metrics, tracing
from services.runtime.alarms import ALARM_HEADER, AlarmSchedule
from services.runtime.eventstore import AppendConflict, ObjectEventStore
from services.runtime.kind import (
    SYSTEM_CLOCK,
    BadCommand,
    Clock,
    Committed,
    D,
    DueAlarm,
    ObjectContext,
    ObjectKind,
    S,
)
from services.runtime.micro import EndpointCounts

log = logging.getLogger(__name__)

# Headers of every broadcast, so a watcher can tell it missed one and read it from the stream:
COMMIT_HEADER = "Durachat-Commit"  # the stream sequence of the commit the update is of
PREVIOUS_HEADER = "Durachat-Previous"  # the version of the object's broadcast before it


def error_bytes(code: ErrorCode, message: str) -> bytes:
    return ErrorReply(code=code, message=message).model_dump_json().encode()


TRY_AGAIN = error_bytes(ErrorCode.UNAVAILABLE, "Try again.")
RECEIVED = "_durachat_received"  # set on a command's Msg when it arrives (perf_counter)
SPAN = "_durachat_span"  # the command's `process` span, when tracing is on
_ERROR_PREFIX = b'{"type":"error","code":"'


def reply_outcome(data: bytes) -> str:
    """`ok`, or the error code of an ErrorReply (a bounded set), for the command metric."""
    if not data.startswith(_ERROR_PREFIX):
        return "ok"
    end = data.find(b'"', len(_ERROR_PREFIX))
    return data[len(_ERROR_PREFIX):end].decode() if end > 0 else "error"


@dataclass
class Decided:
    """One command of a batch, decided: what to answer, and the events it produced."""

    msg: Msg
    reply: bytes
    command: Any = None
    events: list[Any] = field(default_factory=list)


@dataclass
class Batch:
    """A batch of commands, decided in order against the object."""

    decided: list[Decided] = field(default_factory=list)
    broken: bool = False  # a command failed half-way: the object is rebuilt after the batch

    @property
    def events(self) -> list[Any]:
        return [e for d in self.decided for e in d.events]

    def commit_id(self) -> str:
        """The commit's Nats-Msg-Id: the command id, or one derived from all of them."""
        ids = [str(d.command.command_id) for d in self.decided if d.events]
        return ids[0] if len(ids) == 1 else str(uuid5(NAMESPACE_OID, ",".join(ids)))


class ObjectMailbox(Generic[S]):
    """One object's queue and cached state; one task drains it, a batch at a time."""

    def __init__(self, host: ObjectHost[S, Any], key: str, partition: int) -> None:
        self.host = host
        self.kind = host.kind
        self.key = key
        self.partition = partition
        self.ctx = host.context_for(key)
        self.out_subject = out_subject(self.kind.name, key)
        self.queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=host.mailbox_limit)
        self.state: S | None = None
        self.sequence = 0  # last subject sequence of the object's stream that we have applied
        self.unsnapshotted = 0  # events applied since the last snapshot
        self.alarm: float | None = None  # the alarm time the object had after the last commit
        self.loaded = False
        self.last_broadcast: int | None = None  # version of our last broadcast (None: unknown)
        self.last_active = time.monotonic()  # when its last batch ended (for the live view)
        self.last_commit_at: float | None = None  # wall clock of its last commit
        self.task = asyncio.create_task(self._run(), name=f"mailbox {self.kind.name}/{key}")

    async def _run(self) -> None:
        host = self.host
        logs.object_context(self.kind.name, self.key)  # this task's log lines name the object
        while True:
            try:
                first = await asyncio.wait_for(self.queue.get(), timeout=host.idle_after)
            except TimeoutError:
                if self.queue.empty():  # no await between this check and the removal
                    host._mailboxes.pop(self.key, None)
                    metrics.OBJECT_EVICTIONS.labels(self.kind.name, "idle").inc()
                    return
                continue
            batch = [first]
            while len(batch) < host.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await self._process(batch)
            except Exception:
                # Loading or storing failed (the bus, not the command): answer "try again".
                log.exception("mailbox %s/%s failed a batch", self.kind.name, self.key)
                metrics.COMMIT_ERRORS.labels(self.kind.name).inc()
                self._forget()
                for msg in batch:
                    await host.reply(msg, TRY_AGAIN)
            finally:
                self.last_active = time.monotonic()
                for _ in batch:
                    self.queue.task_done()

    def _forget(self) -> None:
        """Drop the cached state; the next command rebuilds it from the stream."""
        self.state = None
        self.sequence = 0
        self.loaded = False
        self.last_broadcast = None

    async def _process(self, messages: list[Msg]) -> None:
        if not self.loaded:
            await self._load()
        batch = self._decide(messages)
        events = batch.events
        if events:
            if not self.host.may_write(self.partition):
                await self._step_down(batch)
                return
            if not await self._commit(batch, events):
                return
        if batch.broken:
            self._forget()
        await self._release(batch)
        for d in batch.decided:
            if d.events:  # under the command's span: what a reaction sends joins its trace
                with tracing.using(getattr(d.msg, SPAN, None)):
                    await self._react([Committed(d.command, d.events)])
        await self._snapshot(len(events))

    # --- the stages of a batch, in order --------------------------------------------------------

    async def _load(self) -> None:
        """Rebuild the object from its snapshot and stream, and say its last commit again."""
        self.loaded = True
        if not self.kind.durable:
            return  # in memory only: nothing stored to read, nothing owed
        started = time.perf_counter()
        loaded = await self.host.store.load(self.key)
        source = "snapshot" if loaded.from_snapshot else "replay" if loaded.sequence else "new"
        metrics.OBJECT_LOADS.labels(self.kind.name, source).inc()
        metrics.OBJECT_LOAD_SECONDS.labels(self.kind.name, source).observe(time.perf_counter() - started)
        self.state, self.sequence = cast(S, loaded.aggregate), loaded.sequence
        self.unsnapshotted = loaded.events_after_snapshot
        self.alarm = self._wake_at()
        # The previous owner may have stored its last commit and died before broadcasting it
        # or reacting to it: say it again. Watchers drop versions they already have, and
        # reactions tolerate running twice.
        await self._broadcast(loaded.last_events)
        if loaded.last_events:
            await self._react([Committed(None, loaded.last_events)])

    def _decide(self, messages: list[Msg]) -> Batch:
        """Decide each command in order against the object; nothing leaves the process yet."""
        batch = Batch()
        for msg in messages:
            if batch.broken:  # the state is suspect: these are answered after a rebuild
                batch.decided.append(Decided(msg, TRY_AGAIN))
                continue
            batch.decided.append(self._decide_one(msg, batch))
        return batch

    def _decide_one(self, msg: Msg, batch: Batch) -> Decided:
        kind = self.kind
        try:
            command = self._parse(msg)
        except BadCommand as exc:
            return Decided(msg, error_bytes(ErrorCode.BAD_REQUEST, str(exc)))
        try:
            state, reply = kind.decide(command, self.state, self.ctx)
        except Exception:
            # A bug, not a refusal: tried once, logged once, never retried by the client.
            # The state may be half-changed: drop this command's events, keep the earlier
            # commands' decisions, and rebuild the object after the batch.
            log.exception("%s/%s: %r failed", kind.name, self.key, command)
            self._pending_events()
            batch.broken = True
            return Decided(
                msg, error_bytes(ErrorCode.INTERNAL, f"The {kind.name} failed on this command.")
            )
        self.state = state
        return Decided(msg, reply.model_dump_json().encode(), command, self._pending_events())

    def _parse(self, msg: Msg) -> Any:
        alarm_at = (msg.headers or {}).get(ALARM_HEADER)
        if alarm_at is None:
            return self.kind.parse(msg.data)
        try:
            return DueAlarm(float(alarm_at))
        except ValueError:
            raise BadCommand(f"bad {ALARM_HEADER} header") from None

    def _pending_events(self) -> list[Any]:
        """The events the last command triggered (a memory-only state has none)."""
        if self.kind.durable and self.state is not None:
            return list(self.state.collect_events())  # type: ignore[attr-defined]
        return []

    async def _step_down(self, batch: Batch) -> None:
        """Our lease lapsed (we were paused, or cut off): another replica may own the
        partition now. Write nothing, answer "try again" (the retry finds the new owner)."""
        self._forget()
        self.host.lease_lapsed(self.partition)
        for decided in batch.decided:
            await self.host.reply(decided.msg, TRY_AGAIN)

    async def _commit(self, batch: Batch, events: list[Any]) -> bool:
        """Append the batch's events as one commit and keep the alarm in step with it.
        False when the object moved on under us (every command is answered `conflict`)."""
        host = self.host
        alarm = self._wake_at()
        if alarm is not None and alarm != self.alarm:
            # Scheduled before the commit that records it: an alarm the object knows of is
            # always scheduled; if the commit fails, the object ignores the stray wake-up.
            await host.alarms.schedule(self.key, alarm)
        started = time.perf_counter()
        try:
            with self._commit_span(batch, len(events)) as span:
                self.sequence = await host.store.append(
                    self.key, events, expected=self.sequence, commit_id=batch.commit_id(),
                    headers=tracing.headers_of(span),
                )
        except AppendConflict:
            metrics.COMMIT_CONFLICTS.labels(self.kind.name).inc()
            log.warning("%s/%s: stale copy, rebuilding", self.kind.name, self.key)
            self._forget()
            conflict = error_bytes(ErrorCode.CONFLICT, "The object moved on; try again.")
            for decided in batch.decided:
                await host.reply(decided.msg, conflict)
            return False
        metrics.COMMIT_SECONDS.labels(self.kind.name).observe(time.perf_counter() - started)
        metrics.COMMIT_BATCH.labels(self.kind.name).observe(len(batch.decided))
        self.last_commit_at = time.time()
        if alarm is None and self.alarm is not None:
            await host.alarms.cancel(self.key)
        self.alarm = alarm
        return True

    def _commit_span(self, batch: Batch, events: int):
        """`durachat.commit <kind>`: a child of the batch's first traced command, linked to
        every command of the batch (semconv's batch shape)."""
        spans = [s for d in batch.decided if (s := getattr(d.msg, SPAN, None)) is not None]
        return tracing.span(
            f"durachat.commit {self.kind.name}", parent=spans[0] if spans else None,
            links=[tracing.Link(s.get_span_context()) for s in spans],
            attributes={"messaging.batch.message_count": len(batch.decided), "durachat.events": events},
        )

    async def _release(self, batch: Batch) -> None:
        """The output gate opens: broadcasts and replies, in command order."""
        for decided in batch.decided:
            span = getattr(decided.msg, SPAN, None)
            await self._broadcast(decided.events, tracing.headers_of(span) if span else None)
            await self.host.reply(decided.msg, decided.reply)

    async def _react(self, commits: list[Committed]) -> None:
        for committed in commits:
            for reaction in self.kind.reactions:
                try:
                    await reaction(committed, self.state, self.ctx)
                except Exception:
                    log.exception("%s/%s: reaction %s failed", self.kind.name, self.key, reaction.__name__)

    async def _snapshot(self, new_events: int) -> None:
        # After the broadcasts: a snapshot never covers a commit whose broadcast is owed.
        self.unsnapshotted += new_events
        if self.state is not None and self.unsnapshotted >= self.host.snapshot_every:
            await self.host.store.save_snapshot(self.key, self.state, self.sequence)  # type: ignore[arg-type]
            self.unsnapshotted = 0

    # ---------------------------------------------------------------------------------------------

    def _wake_at(self) -> float | None:
        wake_at = self.kind.wake_at
        return wake_at(self.state) if wake_at is not None and self.state is not None else None

    async def _broadcast(self, events: list[Any], headers: dict[str, str] | None = None) -> None:
        broadcast = self.kind.broadcast
        if broadcast is None:
            return
        for event in events:
            update = broadcast(event)
            if update is not None:
                # No "previous" after a load: whether the one before went out is not known
                # here (the last owner may have died before), so a watcher checks the stream.
                sent = {**(headers or {}), COMMIT_HEADER: str(self.sequence)}
                if self.last_broadcast is not None:
                    sent[PREVIOUS_HEADER] = str(self.last_broadcast)
                await self.host.nc.publish(
                    self.out_subject, update.model_dump_json().encode(), headers=sent
                )
                self.last_broadcast = getattr(update, "version", None)


class ObjectHost(Generic[S, D]):
    """Hosts the objects of one kind on the partitions this process owns."""

    def __init__(
        self,
        nc: NATS,
        kind: ObjectKind[S, D],
        deps: D,
        *,
        clock: Clock = SYSTEM_CLOCK,
        stream_replicas: int = 1,
        mailbox_limit: int = 2000,
        max_batch: int = 500,
        idle_after: float = 300.0,
        snapshot_every: int = 100,
        may_write: Callable[[int], bool] = lambda partition: True,
        on_lease_lapsed: Callable[[int], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        kind.check()
        self.nc = nc
        self.kind = kind
        self.deps = deps
        self.clock = clock
        self.may_write = may_write
        self._on_lease_lapsed = on_lease_lapsed
        self.store = ObjectEventStore(nc, kind.name, replicas=stream_replicas)
        self.alarms = AlarmSchedule(nc, kind.name, replicas=stream_replicas)
        self.mailbox_limit = mailbox_limit
        self.max_batch = max_batch
        self.idle_after = idle_after
        self.snapshot_every = snapshot_every
        self._subscriptions: dict[int, Subscription] = {}
        self._mailboxes: dict[str, ObjectMailbox[S]] = {}
        self._background: set[asyncio.Task] = set()
        metrics.OBJECTS_RESIDENT.labels(kind.name).set_function(lambda: len(self._mailboxes))
        self._depth = metrics.MAILBOX_DEPTH.labels(kind.name)
        self._command_seconds: dict[str, Any] = {}
        # its commands in `$SRV.STATS` (services/runtime/micro.py)
        self.counts = EndpointCounts(kind.name, f"cmd.{kind.name}.*")

    @property
    def partitions(self) -> set[int]:
        return set(self._subscriptions)

    def resident(self) -> list[str]:
        """Keys of the objects currently in memory."""
        return list(self._mailboxes)

    def context_for(self, key: str) -> ObjectContext[D]:
        return ObjectContext(self.kind.name, key, self.deps, self.clock, self.spawn)

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` in the background; it is cancelled when the host stops."""
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self, partitions: Iterable[int]) -> None:
        if self.kind.durable:
            await self.store.ensure_stream()
        if self.kind.wake_at is not None:
            await self.alarms.ensure_stream()
        for partition in partitions:
            await self.own(partition)

    async def own(self, partition: int) -> None:
        """Start serving one partition."""
        if partition not in self._subscriptions:
            subject = partition_filter(self.kind.name, partition)
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
        await self._retire([m for m in self._mailboxes.values() if m.partition == partition], "handover")

    async def evict(self, key: str) -> bool:
        """Hibernate object `key` now, as if it had been idle (after its queued commands)."""
        mailbox = self._mailboxes.get(key)
        if mailbox is not None:
            await self._retire([mailbox], "evicted")
        return mailbox is not None

    def lease_lapsed(self, partition: int) -> None:
        if self._on_lease_lapsed is not None:
            self.spawn(self._on_lease_lapsed(partition), f"step down {self.kind.name}/{partition}")

    async def stop(self) -> None:
        """Release every partition, finish in-flight work, drop all objects."""
        for partition in list(self._subscriptions):
            await self._subscriptions.pop(partition).drain()
        await self._retire(list(self._mailboxes.values()), "stopped")
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=5)

    async def _retire(self, mailboxes: list[ObjectMailbox[S]], reason: str) -> None:
        """Let each mailbox finish what it holds, then drop it with its object."""
        await asyncio.gather(*(m.queue.join() for m in mailboxes))
        for mailbox in mailboxes:
            mailbox.task.cancel()
            if self._mailboxes.get(mailbox.key) is mailbox:
                del self._mailboxes[mailbox.key]
                metrics.OBJECT_EVICTIONS.labels(self.kind.name, reason).inc()

    async def reply(self, msg: Msg, data: bytes) -> None:
        received = getattr(msg, RECEIVED, None)
        if received is not None:
            self.counts.record_reply(int((time.perf_counter() - received) * 1e9), data)
            outcome = reply_outcome(data)
            histogram = self._command_seconds.get(outcome)
            if histogram is None:
                histogram = self._command_seconds[outcome] = metrics.COMMAND_SECONDS.labels(
                    self.kind.name, outcome
                )
            histogram.observe(time.perf_counter() - received)
            if tracing.ENABLED:
                tracing.end(getattr(msg, SPAN, None), **{"durachat.outcome": outcome})
        if msg.reply:
            await self.nc.publish(msg.reply, data)

    async def _on_command(self, msg: Msg) -> None:
        setattr(msg, RECEIVED, time.perf_counter())
        _, _, partition, token = msg.subject.split(".", 3)
        try:
            key = key_from_token(token)
        except InvalidKey as exc:
            await self.reply(msg, error_bytes(ErrorCode.BAD_REQUEST, str(exc)))
            return
        mailbox = self._mailboxes.get(key)
        if mailbox is None:
            mailbox = self._mailboxes[key] = ObjectMailbox(self, key, int(partition))
        self._depth.observe(mailbox.queue.qsize())
        if tracing.ENABLED:
            setattr(msg, SPAN, tracing.start_consumer(
                f"process cmd.{self.kind.name}.{{key}}", msg.headers,
                **{"messaging.destination.partition.id": partition,
                   "durachat.mailbox_depth": mailbox.queue.qsize()},
            ))
        try:
            mailbox.queue.put_nowait(msg)
        except asyncio.QueueFull:
            metrics.MAILBOX_OVERLOADED.labels(self.kind.name).inc()
            await self.reply(
                msg, error_bytes(ErrorCode.OVERLOADED, f"{self.kind.name} {key} is overloaded.")
            )
