"""Alarms on a real nats-server: fired at least once via JetStream message scheduling, once
per set in normal running, retried with backoff, and fired after a start when they fell due
while nothing ran. A tiny object kind, a page of code, shows what a service writes."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal, Union

import nats
import pytest
from eventsourcing.domain import Aggregate, event
from pydantic import BaseModel, Field, TypeAdapter

from contracts.common import Command, ErrorCode, ErrorReply
from contracts.room import Accepted, CreatePrivateRoom, GetRoom, JoinRoom, RoomState, room_reply
from contracts.keys import new_private_room_id
from contracts.subjects import ROOM, command_subject
from services.room.handlers import RoomBehaviour
from services.runtime.alarms import AlarmRunner, alarm_stream
from services.runtime.host import ObjectHost
from tests.support import eventually

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


reminder_command = TypeAdapter(
    Annotated[Union[SetAlarm, DeleteAlarm, GetReminder], Field(discriminator="type")]
)


class ReminderBehaviour:
    aggregate_type = Reminder

    def __init__(self, kind: str, failures: int = 0) -> None:
        self.kind = kind
        self.failures = failures  # the alarm handler raises this many times first
        self.attempts: list[float] = []

    def parse(self, data: bytes):
        return reminder_command.validate_json(data)

    def decide(self, key, reminder, command):
        reminder = reminder or Reminder()
        match command:
            case SetAlarm(at=at):
                reminder.set_alarm(at)
            case DeleteAlarm():
                reminder.delete_alarm()
        return reminder, ReminderState(alarm_at=reminder.alarm_at, fired=reminder.fired)

    def broadcast(self, event):
        return None

    def alarm_time(self, reminder):
        return reminder.alarm_at

    def on_alarm(self, key, reminder, at):
        self.attempts.append(time.monotonic())
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("the handler failed")
        if reminder is not None and reminder.alarm_at == at:
            reminder.fire(at)
        return reminder, Accepted(version=reminder.version)


# --- fixtures --------------------------------------------------------------------------------


class Running:
    """A host and an alarm runner for one kind, in this process; stop() and start() again."""

    def __init__(self, url: str, behaviour, partitions: int) -> None:
        self.url, self.behaviour, self.partitions = url, behaviour, partitions

    async def start(self) -> Running:
        self.nc = await nats.connect(self.url)
        self.host = ObjectHost(self.nc, self.behaviour)
        await self.host.start(range(self.partitions))
        self.runner = AlarmRunner(self.nc, self.behaviour.kind, request_timeout=5)
        await self.runner.start()
        return self

    async def stop(self) -> None:
        await self.runner.stop()
        await self.host.stop()
        await self.nc.drain()


async def ask(nc, kind: str, key: str, command, adapter=None):
    msg = await nc.request(command_subject(kind, key), command.model_dump_json().encode(), 10)
    return (adapter or TypeAdapter(ReminderState)).validate_json(msg.data)


async def alarms_settled(nc, kind: str) -> bool:
    """Nothing due is waiting or being retried."""
    info = await nc.jetstream().consumer_info(alarm_stream(kind), f"alarms-{kind}")
    return info.num_pending == 0 and info.num_ack_pending == 0


@pytest.fixture
def kind() -> str:
    return f"reminder{uuid.uuid4().hex[:8]}"


# --- the stories -------------------------------------------------------------------------------


async def test_an_alarm_fires_once_per_set(nats_server, nc, kind):
    running = await Running(nats_server.url, ReminderBehaviour(kind), nats_server.partitions).start()
    try:
        at = time.time() + 1
        await ask(nc, kind, "r1", SetAlarm(at=at))
        state = await eventually(
            lambda: _fired(nc, kind, "r1"), what="the alarm to fire"
        )
        assert state.fired == [at] and state.alarm_at is None
        await eventually(lambda: alarms_settled(nc, kind), what="no alarm in flight")
        assert (await ask(nc, kind, "r1", GetReminder())).fired == [at]
        assert len(running.behaviour.attempts) == 1
    finally:
        await running.stop()


async def _fired(nc, kind, key):
    state = await ask(nc, kind, key, GetReminder())
    return state if state.fired else None


async def test_a_replaced_or_deleted_alarm_does_not_fire(nats_server, nc, kind):
    running = await Running(nats_server.url, ReminderBehaviour(kind), nats_server.partitions).start()
    try:
        # Replaced: only the newer time fires.
        first, second = time.time() + 1, time.time() + 2
        await ask(nc, kind, "r1", SetAlarm(at=first))
        await ask(nc, kind, "r1", SetAlarm(at=second))
        state = await eventually(lambda: _fired(nc, kind, "r1"), what="the alarm to fire")
        assert state.fired == [second]

        # Deleted: the schedule is gone from the server, and nothing fires after its time.
        at = time.time() + 1
        await ask(nc, kind, "r2", SetAlarm(at=at))
        await ask(nc, kind, "r2", DeleteAlarm())
        info = await nc.jetstream().stream_info(alarm_stream(kind), subjects_filter=f"alarm.{kind}.>")
        assert f"alarm.{kind}.set.r2" not in (info.state.subjects or {})
        await eventually(lambda: _after(at + 1.5), what="the due time to pass")
        await eventually(lambda: alarms_settled(nc, kind), what="no alarm in flight")
        assert (await ask(nc, kind, "r2", GetReminder())).fired == []
    finally:
        await running.stop()


async def _after(moment: float) -> bool:
    return time.time() > moment


async def test_a_failing_handler_is_retried_with_backoff(nats_server, nc, kind):
    behaviour = ReminderBehaviour(kind, failures=2)
    running = await Running(nats_server.url, behaviour, nats_server.partitions).start()
    try:
        at = time.time() + 1
        await ask(nc, kind, "r1", SetAlarm(at=at))
        state = await eventually(lambda: _fired(nc, kind, "r1"), timeout=20, what="the retries")
        assert state.fired == [at]
        # Two failures, then success: retried after about 2 s, then about 4 s.
        first_gap, second_gap = (b - a for a, b in zip(behaviour.attempts, behaviour.attempts[1:]))
        assert len(behaviour.attempts) == 3
        assert 1.8 <= first_gap <= 3.5 and 3.8 <= second_gap <= 5.5
    finally:
        await running.stop()


async def test_an_alarm_due_while_nothing_ran_fires_after_start(nats_server, nc, kind):
    running = await Running(nats_server.url, ReminderBehaviour(kind), nats_server.partitions).start()
    at = time.time() + 1
    await ask(nc, kind, "r1", SetAlarm(at=at))
    await running.stop()

    # The due time passes while no replica runs.
    await eventually(lambda: _after(at + 1.5), what="the due time to pass")

    # A new replica starts: the alarm fires.
    running = await Running(nats_server.url, ReminderBehaviour(kind), nats_server.partitions).start()
    try:
        state = await eventually(lambda: _fired(nc, kind, "r1"), what="the alarm to fire")
        assert state.fired == [at]
    finally:
        await running.stop()


async def test_a_private_room_nobody_joined_expires(nats_server, nc):
    running = await Running(
        nats_server.url, RoomBehaviour(private_room_ttl=1), nats_server.partitions
    ).start()
    try:
        unused, used = new_private_room_id(), new_private_room_id()
        for room in (unused, used):
            assert isinstance(await ask(nc, ROOM, room, CreatePrivateRoom(), room_reply), Accepted)
        await ask(nc, ROOM, used, JoinRoom(session_id="s1", name="alice"), room_reply)

        async def gone():
            reply = await ask(nc, ROOM, unused, GetRoom(), room_reply)
            return isinstance(reply, ErrorReply) and reply.code == ErrorCode.NOT_FOUND

        await eventually(gone, what="the unused room to expire")
        await eventually(lambda: alarms_settled(nc, ROOM), what="no alarm in flight")
        state = await ask(nc, ROOM, used, GetRoom(), room_reply)
        assert isinstance(state, RoomState) and state.members == ["alice"]
    finally:
        await running.stop()
