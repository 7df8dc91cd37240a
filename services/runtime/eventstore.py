"""Object event streams in JetStream.

Each object's events live on one subject, `evt.<kind>.<key>`. One JetStream message is one
commit: the events a group commit appended for that object, in order. Appends name the
subject sequence they expect to follow (`Nats-Expected-Last-Subject-Sequence`), so a stale
or concurrent writer is refused, and carry a `Nats-Msg-Id` so a republished commit is
stored once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import nats.js.errors
from eventsourcing.domain import Aggregate, Snapshot
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    Transcoding,
    UUIDAsHex,
)
from eventsourcing.utils import get_topic, resolve_topic
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from contracts.subjects import event_stream, event_subject, snapshot_stream, snapshot_subject

WRONG_LAST_SEQUENCE = 10071
MSG_ID = "Nats-Msg-Id"
SNAPSHOT_SEQUENCE = "Durachat-Commit-Sequence"
LOAD_BATCH = 1000


class AppendConflict(Exception):
    """Someone else appended to the object since we read it: our copy is stale."""


@dataclass(frozen=True)
class Commit:
    """One stored commit: its stream sequence and the domain events in it."""

    sequence: int
    events: list[Any]


@dataclass
class LoadedObject:
    """An object as rebuilt from its stream."""

    aggregate: Aggregate | None  # None: the object has no events
    sequence: int  # subject sequence of its last commit (0: none)
    # The last commit read after the snapshot. A snapshot is taken only of commits already
    # broadcast, so this is the one commit whose broadcast may be owed.
    last_events: list[Any] = field(default_factory=list)
    events_after_snapshot: int = 0
    from_snapshot: bool = False  # built from a snapshot (not from the first commit)


@dataclass(frozen=True)
class StoredMessage:
    """One stored message as a direct get returns it."""

    sequence: int
    subject: str
    time: str  # Nats-Time-Stamp: when the server stored it, RFC 3339 in UTC, up to ns
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)  # as stored, plus the Nats-* ones


class DirectGetError(RuntimeError):
    """The server answered a direct get with an error status (e.g. 503: no such stream)."""


async def direct_get(
    nc: NATS, stream: str, start: int = 1, *, subject: str | None = None, batch: int = LOAD_BATCH
) -> AsyncGenerator[StoredMessage, None]:
    """The messages of `stream` from sequence `start` on (only `subject`'s if given), in order,
    by batched direct gets (`$JS.API.DIRECT.GET`): no consumer is created on the server.

    Ends at the last message stored when the final batch was asked for. Use it inside
    `contextlib.aclosing` when you may stop early, so its inbox subscription is removed.
    """
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        while True:
            request: dict[str, Any] = {"seq": start, "batch": batch}
            if subject is not None:
                request["next_by_subj"] = subject
            await nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox
            )
            pending = 0
            got = 0
            while True:
                msg = await sub.next_msg(timeout=5)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status is not None:
                    if status in ("204", "404"):  # end of batch / nothing (more) there
                        break
                    raise DirectGetError(f"direct get of {subject or stream} failed: {headers}")
                sequence = int(headers["Nats-Sequence"])
                yield StoredMessage(
                    sequence, headers.get("Nats-Subject", subject or ""),
                    headers.get("Nats-Time-Stamp", ""), msg.data, headers,
                )
                pending = int(headers.get("Nats-Num-Pending", "0"))
                start = sequence + 1
                got += 1
            if got == 0 or pending == 0:
                return
    finally:
        await sub.unsubscribe()


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create a stream unless it exists; safe when several replicas start at once."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.stream_info(config.name)  # another replica won the race


class ValueAsFields(Transcoding):
    """A frozen dataclass held in an object's state (e.g. a room's AI reply): its topic and
    fields. Like an event's class, a value class that moves keeps its old topic registered."""

    name = "value"  # found by name when decoding; StateTranscoder picks out values to encode

    def encode(self, obj: Any) -> dict[str, Any]:
        return {
            "topic": get_topic(type(obj)),
            "fields": {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)},
        }

    def decode(self, data: dict[str, Any]) -> Any:
        cls = resolve_topic(data["topic"])
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise TypeError(f"{data['topic']} is not a value class")
        return cls(**data["fields"])


class StateTranscoder(JSONTranscoder):
    """eventsourcing's JSON transcoder, which also stores frozen dataclasses (values)."""

    def __init__(self) -> None:
        super().__init__()
        self._values = ValueAsFields()
        self.names[self._values.name] = self._values

    def _encode_obj(self, o: Any) -> dict[str, Any]:
        if type(o) not in self.types and _is_value(o):
            return {"_type_": self._values.name, "_data_": self._values.encode(o)}
        return super()._encode_obj(o)


def _is_value(o: Any) -> bool:
    return (
        dataclasses.is_dataclass(o) and not isinstance(o, type)
        and o.__dataclass_params__.frozen  # type: ignore[attr-defined]
    )


def new_mapper() -> Mapper:
    transcoder = StateTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DecimalAsStr())
    transcoder.register(DatetimeAsISO())
    return Mapper(transcoder=transcoder)


class CommitCodec:
    """Domain events <-> the bytes of one stored commit (or snapshot), via eventsourcing's
    mapper: `{"id": originator id, "events": [[topic, version, state JSON], ...]}`."""

    def __init__(self) -> None:
        self.mapper = new_mapper()

    def encode(self, events: Sequence[Any]) -> bytes:
        stored = [self.mapper.to_stored_event(e) for e in events]
        return json.dumps(
            {
                "id": str(stored[0].originator_id),
                "events": [[s.topic, s.originator_version, s.state.decode()] for s in stored],
            },
            separators=(",", ":"),
        ).encode()

    def decode(self, data: bytes) -> list[Any]:
        return [self.mapper.to_domain_event(s) for s in self.stored_events(data)]

    def stored_events(self, data: bytes) -> list[StoredEvent]:
        """The events of one commit as stored (topic, version, state JSON), without
        resolving their topics to domain classes."""
        body = json.loads(data)
        originator_id = UUID(body["id"])
        return [
            StoredEvent(
                originator_id=originator_id,
                originator_version=version,
                topic=topic,
                state=state.encode(),
            )
            for topic, version, state in body["events"]
        ]


class ObjectEventStore:
    """Reads and appends the event streams of one object kind."""

    def __init__(self, nc: NATS, kind: str, replicas: int = 1) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.kind = kind
        self.stream = event_stream(kind)
        self.replicas = replicas
        self.codec = CommitCodec()
        self.snapshot_stream = snapshot_stream(kind)

    async def ensure_stream(self) -> None:
        """Create the kind's stream if it does not exist (idempotent across replicas)."""
        config = StreamConfig(
            name=self.stream,
            subjects=[f"evt.{self.kind}.>"],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            num_replicas=self.replicas,
            allow_direct=True,
            duplicate_window=120.0,
        )
        snapshots = StreamConfig(
            name=self.snapshot_stream,
            subjects=[f"snap.{self.kind}.>"],
            storage=StorageType.FILE,
            max_msgs_per_subject=1,  # only the latest snapshot of each object is kept
            num_replicas=self.replicas,
            allow_direct=True,
        )
        await ensure_stream(self.js, config)
        await ensure_stream(self.js, snapshots)

    def encode(self, events: Sequence[Any]) -> bytes:
        return self.codec.encode(events)

    def decode(self, data: bytes) -> list[Any]:
        return self.codec.decode(data)

    # --- reading ------------------------------------------------------------------------------

    async def read(self, key: str, after: int = 0) -> list[Commit]:
        """Every commit of object `key` with a stream sequence above `after`, in order.

        Uses batched direct gets: no consumer is created, so waking an object is cheap.
        """
        messages = await self.read_messages(key, after)
        return [Commit(m.sequence, self.decode(m.data)) for m in messages]

    async def read_messages(self, key: str, after: int = 0) -> list[StoredMessage]:
        """Like `read`, but the stored messages as they are: sequence, time, subject, bytes."""
        subject = event_subject(self.kind, key)
        return [m async for m in direct_get(self.nc, self.stream, after + 1, subject=subject)]

    async def load(self, key: str) -> LoadedObject:
        """Rebuild object `key` from its latest snapshot plus the commits after it."""
        aggregate, sequence = await self.load_snapshot(key)
        loaded = LoadedObject(aggregate, sequence, from_snapshot=aggregate is not None)
        for commit in await self.read(key, after=sequence):
            for domain_event in commit.events:
                loaded.aggregate = domain_event.mutate(loaded.aggregate)
            loaded.sequence, loaded.last_events = commit.sequence, commit.events
            loaded.events_after_snapshot += len(commit.events)
        return loaded

    # --- snapshots ------------------------------------------------------------------------------

    async def save_snapshot(self, key: str, aggregate: Aggregate, sequence: int) -> None:
        """Store `aggregate` as of commit `sequence`; it replaces the object's previous one."""
        await self.js.publish(
            snapshot_subject(self.kind, key),
            self.codec.encode([Snapshot.take(aggregate)]),
            headers={SNAPSHOT_SEQUENCE: str(sequence)},
        )

    async def load_snapshot(self, key: str) -> tuple[Aggregate | None, int]:
        """The object's latest snapshot and the commit sequence it covers, or (None, 0)."""
        try:
            msg = await self.js.get_last_msg(
                self.snapshot_stream, snapshot_subject(self.kind, key), direct=True
            )
        except nats.js.errors.NotFoundError:
            return None, 0
        (snapshot,) = self.codec.decode(msg.data or b"")
        return snapshot.mutate(None), int((msg.headers or {})[SNAPSHOT_SEQUENCE])

    # --- appending -------------------------------------------------------------------------------

    async def append(
        self, key: str, events: Sequence[Any], expected: int, commit_id: str,
        headers: dict[str, str] | None = None,
    ) -> int:
        """Append `events` as one commit after subject sequence `expected`; returns its sequence.
        `headers` are stored with it (the commit span's `traceparent`, when tracing is on).

        Raises AppendConflict when the subject has moved on (another writer got there first).
        """
        subject = event_subject(self.kind, key)
        headers = {**(headers or {}),
                   "Nats-Expected-Last-Subject-Sequence": str(expected), MSG_ID: commit_id}
        try:
            ack = await self.js.publish(subject, self.encode(events), headers=headers)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                # Our own earlier attempt may have been stored even though its ack was lost.
                last = await self._last_message(subject)
                if last is not None and (last.headers or {}).get(MSG_ID) == commit_id:
                    return last.seq
                raise AppendConflict(f"{subject} moved past {expected}") from exc
            raise
        if ack.duplicate:
            raise AppendConflict(f"{subject}: commit {commit_id} was already stored")
        return ack.seq

    async def last_sequence(self, key: str) -> int:
        """The stream sequence of object `key`'s last commit (0: it has none)."""
        last = await self._last_message(event_subject(self.kind, key))
        return last.seq if last is not None else 0

    async def _last_message(self, subject: str):
        try:
            return await self.js.get_last_msg(self.stream, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None
