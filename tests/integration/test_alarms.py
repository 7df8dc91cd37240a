"""Alarms on a real nats-server: fired at least once via JetStream message scheduling, once
per set in normal running, retried with backoff, and fired after a start when they fell due
while nothing ran. A tiny object kind, a page of code, shows what a service writes."""

from __future__ import annotations

import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Annotated, Literal

import pytest
from eventsourcing.domain import Aggregate, event
from pydantic import BaseModel, Field, TypeAdapter

from contracts.client import ObjectClient, client_for
from contracts.common import Command, ErrorCode, ErrorReply
from contracts.keys import new_private_room_id
from contracts.room import Accepted, CreatePrivateRoom, GetRoom, JoinRoom, RoomClient, RoomState
from contracts.subjects import ROOM
from services.room.main import SERVICE as ROOM_SERVICE
from services.runtime.alarms import alarm_stream
from services.runtime.kind import DueAlarm, ObjectKind, Outcome
from services.runtime.service import Hosting, ObjectService, ObjectServiceSettings, ServiceParts
from tests.conftest import hosted
from tests.support import ask, eventually

pytestmark = pytest.mark.nats


# --- a reminder object: sets, deletes and records its alarms --------------------------------


class Reminder(Aggregate):
    @event("Created")
    def __init__(self) -> None:
        self.alarm_at: float | None = None
        self.fired: list[float] = []

    @event("AlarmSet")
    def set_alarm(self, at: float) -> None:
        self.alarm_at = at

    @event("AlarmDeleted")
    def delete_alarm(self) -> None:
        self.alarm_at = None

    @event("Fired")
    def fire(self, at: float) -> None:
        self.fired.append(at)
        self.alarm_at = None


class SetAlarm(Command):
    type: Literal["set"] = "set"
    at: float


class DeleteAlarm(Command):
    type: Literal["delete"] = "delete"


class GetReminder(Command):
    type: Literal["get"] = "get"


class ReminderState(BaseModel):
    alarm_at: float | None
    fired: list[float]


ReminderCommand = Annotated[SetAlarm | DeleteAlarm | GetReminder, Field(discriminator="type")]


@dataclass
class ReminderDeps:
    failures: int = 0  # the alarm handler raises this many times first
    attempts: list[float] = field(default_factory=list)  # when it was called


def reminder_kind(name: str) -> ObjectKind[Reminder, ReminderDeps]:
    """The whole declaration of a kind with an alarm: its commands, its handlers, its alarm."""
    kind = ObjectKind[Reminder, ReminderDeps](name, ReminderCommand, wake_at=lambda r: r.alarm_at)

    def state_of(reminder: Reminder) -> Outcome:
        return Outcome(reminder, ReminderState(alarm_at=reminder.alarm_at, fired=reminder.fired))

    @kind.handles(SetAlarm)
    def set_alarm(command: SetAlarm, reminder: Reminder | None, ctx) -> Outcome:
        reminder = reminder or Reminder()
        reminder.set_alarm(command.at)
        return state_of(reminder)

    @kind.handles(DeleteAlarm)
    def delete_alarm(command: DeleteAlarm, reminder: Reminder | None, ctx) -> Outcome:
        reminder = reminder or Reminder()
        reminder.delete_alarm()
        return state_of(reminder)

    @kind.handles(GetReminder)
    def get(command: GetReminder, reminder: Reminder | None, ctx) -> Outcome:
        return state_of(reminder or Reminder())

    @kind.handles(DueAlarm)
    def alarm_due(alarm: DueAlarm, reminder: Reminder | None, ctx) -> Outcome:
        ctx.deps.attempts.append(time.monotonic())
        if ctx.deps.failures > 0:
            ctx.deps.failures -= 1
            raise RuntimeError("the handler failed")
        if reminder is not None and reminder.alarm_at == alarm.at:
            reminder.fire(alarm.at)
        return Outcome(reminder, Accepted(version=reminder.version if reminder else 0))

    return kind


def reminder_service(name: str, deps: ReminderDeps) -> ObjectService:
    async def build(nc, settings, clock) -> ServiceParts:
        return ServiceParts([Hosting(reminder_kind(name), deps)])

    return ObjectService(name, ObjectServiceSettings, build)


# --- fixtures --------------------------------------------------------------------------------


class Running:
    """A service hosted in this process, owning every partition; stop() and start() again."""

    def __init__(self, server, service: ObjectService, **settings) -> None:
        self.server, self.service, self.settings = server, service, settings

    async def start(self) -> Running:
        self.stack = AsyncExitStack()
        await self.stack.enter_async_context(hosted(self.server, self.service, **self.settings))
        return self

    async def stop(self) -> None:
        await self.stack.aclose()


def reminders(kind: str) -> type[ObjectClient]:
    # An object may answer any command with an error (the runtime's "try again" while a failed
    # batch is rebuilt): in the contract, so the client retries it. Without it a GetReminder
    # sharing a batch with a failing alarm came back as "replied outside its contract".
    return client_for(kind, TypeAdapter(ReminderState | ErrorReply))


async def alarms_settled(nc, kind: str) -> bool:
    """Nothing due is waiting or being retried."""
    info = await nc.jetstream().consumer_info(alarm_stream(kind), f"alarms-{kind}")
    return info.num_pending == 0 and info.num_ack_pending == 0


@pytest.fixture
def kind() -> str:
    return f"reminder{uuid.uuid4().hex[:8]}"


# --- the stories -------------------------------------------------------------------------------


async def test_an_alarm_fires_once_per_set(nats_server, nc, kind):
    deps = ReminderDeps()
    running = await Running(nats_server, reminder_service(kind, deps)).start()
    try:
        at = time.time() + 1
        await ask(nc, reminders(kind), "r1", SetAlarm(at=at))
        state = await eventually(
            lambda: _fired(nc, kind, "r1"), what="the alarm to fire"
        )
        assert state.fired == [at] and state.alarm_at is None
        await eventually(lambda: alarms_settled(nc, kind), what="no alarm in flight")
        assert (await ask(nc, reminders(kind), "r1", GetReminder())).fired == [at]
        assert len(deps.attempts) == 1
    finally:
        await running.stop()


async def _fired(nc, kind, key):
    state = await ask(nc, reminders(kind), key, GetReminder())
    return state if state.fired else None


async def test_a_replaced_or_deleted_alarm_does_not_fire(nats_server, nc, kind):
    running = await Running(nats_server, reminder_service(kind, ReminderDeps())).start()
    try:
        # Replaced: only the newer time fires.
        first, second = time.time() + 1, time.time() + 2
        await ask(nc, reminders(kind), "r1", SetAlarm(at=first))
        await ask(nc, reminders(kind), "r1", SetAlarm(at=second))
        state = await eventually(lambda: _fired(nc, kind, "r1"), what="the alarm to fire")
        assert state.fired == [second]

        # Deleted: the schedule is gone from the server, and nothing fires after its time.
        at = time.time() + 1
        await ask(nc, reminders(kind), "r2", SetAlarm(at=at))
        await ask(nc, reminders(kind), "r2", DeleteAlarm())
        info = await nc.jetstream().stream_info(alarm_stream(kind), subjects_filter=f"alarm.{kind}.>")
        assert f"alarm.{kind}.set.r2" not in (info.state.subjects or {})
        await eventually(lambda: _after(at + 1.5), what="the due time to pass")
        await eventually(lambda: alarms_settled(nc, kind), what="no alarm in flight")
        assert (await ask(nc, reminders(kind), "r2", GetReminder())).fired == []
    finally:
        await running.stop()


async def _after(moment: float) -> bool:
    return time.time() > moment


async def test_a_failing_handler_is_retried_with_backoff(nats_server, nc, kind):
    behaviour = ReminderDeps(failures=2)
    running = await Running(nats_server, reminder_service(kind, behaviour)).start()
    try:
        at = time.time() + 1
        await ask(nc, reminders(kind), "r1", SetAlarm(at=at))
        state = await eventually(lambda: _fired(nc, kind, "r1"), timeout=20, what="the retries")
        assert state.fired == [at]
        # Two failures, then success: retried after about 2 s, then about 4 s.
        first_gap, second_gap = (b - a for a, b in zip(behaviour.attempts, behaviour.attempts[1:]))
        assert len(behaviour.attempts) == 3
        assert 1.8 <= first_gap <= 3.5 and 3.8 <= second_gap <= 5.5
    finally:
        await running.stop()


async def test_an_alarm_due_while_nothing_ran_fires_after_start(nats_server, nc, kind):
    running = await Running(nats_server, reminder_service(kind, ReminderDeps())).start()
    at = time.time() + 1
    await ask(nc, reminders(kind), "r1", SetAlarm(at=at))
    await running.stop()

    # The due time passes while no replica runs.
    await eventually(lambda: _after(at + 1.5), what="the due time to pass")

    # A new replica starts: the alarm fires.
    running = await Running(nats_server, reminder_service(kind, ReminderDeps())).start()
    try:
        state = await eventually(lambda: _fired(nc, kind, "r1"), what="the alarm to fire")
        assert state.fired == [at]
    finally:
        await running.stop()


async def test_a_private_room_nobody_joined_expires(nats_server, nc):
    running = await Running(nats_server, ROOM_SERVICE, private_room_ttl=1).start()
    try:
        unused, used = new_private_room_id(), new_private_room_id()
        for room in (unused, used):
            assert isinstance(await ask(nc, RoomClient, room, CreatePrivateRoom()), Accepted)
        await ask(nc, RoomClient, used, JoinRoom(session_id="s1", name="alice"))

        async def gone():
            reply = await ask(nc, RoomClient, unused, GetRoom())
            return isinstance(reply, ErrorReply) and reply.code == ErrorCode.NOT_FOUND

        await eventually(gone, what="the unused room to expire")
        await eventually(lambda: alarms_settled(nc, ROOM), what="no alarm in flight")
        state = await ask(nc, RoomClient, used, GetRoom())
        assert isinstance(state, RoomState) and state.members == ["alice"]
    finally:
        await running.stop()
