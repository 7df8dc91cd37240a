"""Alarms: a durable wake-up time per object, fired at least once, retried with backoff.

Built on JetStream message scheduling (nats-server >= 2.12), so no timer lives in a process
that can die with it:

- setting an alarm publishes a schedule on `alarm.<kind>.set.<key>` (`Nats-Schedule: @at …`,
  one per subject, so a new one replaces the old); it is published *before* the commit
  that records the alarm, so an alarm the object knows of is always scheduled (a commit
  that then fails leaves a spurious wake-up, which the object ignores);
- at the due time the server publishes the schedule's body to `alarm.<kind>.due.<key>`;
- every replica of the service pulls from one durable consumer on those subjects and sends
  each due alarm to the object's partition owner as a command; an answer acks it, a failure
  or no answer naks it with backoff 2, 4, 8, 16, 32, 64 s (as Durable Objects retry), after
  which the server gives up. Whoever owns the partition then receives it: alarms survive
  failover, and ones due while nothing ran fire when the service starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from contracts.common import ErrorReply
from contracts.keys import InvalidKey, key_from_token, subject_token
from contracts.subjects import command_subject
from services.runtime import metrics
from services.runtime.eventstore import ensure_stream

log = logging.getLogger(__name__)

ALARM_HEADER = "Durachat-Alarm"  # marks a command as a due alarm; the value is its time
RETRY_DELAYS = (2, 4, 8, 16, 32, 64)


def alarm_stream(kind: str) -> str:
    return f"ALARM_{kind.upper()}"


def schedule_subject(kind: str, key: str) -> str:
    return f"alarm.{kind}.set.{subject_token(key)}"


def due_subject(kind: str, key: str) -> str:
    return f"alarm.{kind}.due.{subject_token(key)}"


class AlarmSchedule:
    """Publishes and cancels the server-side schedules of one object kind's alarms."""

    def __init__(self, nc: NATS, kind: str, replicas: int = 1) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.kind = kind
        self.stream = alarm_stream(kind)
        self.replicas = replicas

    async def ensure_stream(self) -> None:
        config = StreamConfig(
            name=self.stream,
            subjects=[f"alarm.{self.kind}.>"],
            storage=StorageType.FILE,
            max_msgs_per_subject=1,  # one schedule per object; the newest replaces the old
            allow_msg_schedules=True,
            allow_direct=True,
            num_replicas=self.replicas,
        )
        await ensure_stream(self.js, config)

    async def schedule(self, key: str, at: float) -> None:
        """Wake object `key` at `at` (epoch seconds; rounded up to the server's second)."""
        due = datetime.fromtimestamp(math.ceil(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        await self.js.publish(
            schedule_subject(self.kind, key),
            json.dumps({"at": at}).encode(),
            headers={
                "Nats-Schedule": f"@at {due}",
                "Nats-Schedule-Target": due_subject(self.kind, key),
            },
        )

    async def cancel(self, key: str) -> None:
        await self.js.purge_stream(self.stream, subject=schedule_subject(self.kind, key))


class AlarmRunner:
    """Delivers due alarms of one kind to their objects' owners; run by every replica."""

    def __init__(self, nc: NATS, kind: str, request_timeout: float = 10.0) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.kind = kind
        self.request_timeout = request_timeout
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        durable = f"alarms-{self.kind}"
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=f"alarm.{self.kind}.due.>",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.request_timeout + 5,
            max_deliver=1 + len(RETRY_DELAYS),
        )
        try:
            await self.js.add_consumer(alarm_stream(self.kind), config)
        except nats.js.errors.BadRequestError:
            pass  # another replica created it
        self._sub = await self.js.pull_subscribe_bind(durable, stream=alarm_stream(self.kind))
        self._task = asyncio.create_task(self._run(), name=f"alarms {self.kind}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            try:
                msgs = await self._sub.fetch(16, timeout=5)
            except nats.errors.TimeoutError:
                continue
            except nats.errors.Error as exc:
                log.warning("fetching alarms of %s failed: %s", self.kind, exc)
                await asyncio.sleep(1)
                continue
            await asyncio.gather(*(self._deliver(msg) for msg in msgs))

    async def _deliver(self, msg) -> None:
        try:
            key = key_from_token(msg.subject.rsplit(".", 1)[1])
            at = float(json.loads(msg.data)["at"])
        except (InvalidKey, ValueError, KeyError, TypeError):
            log.error("dropping a malformed alarm on %s: %r", msg.subject, msg.data[:100])
            await msg.term()
            return
        attempt = msg.metadata.num_delivered
        metrics.ALARM_LAG_SECONDS.labels(self.kind).observe(max(0.0, time.time() - at))
        failed: ErrorReply | Exception | None
        try:
            reply = await self.nc.request(
                command_subject(self.kind, key),
                b"",
                timeout=self.request_timeout,
                headers={ALARM_HEADER: repr(at)},
            )
            answer = json.loads(reply.data)
            failed = ErrorReply.model_validate(answer) if answer.get("type") == "error" else None
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            failed = exc
        if failed is None:
            await msg.ack()
            return
        if attempt > len(RETRY_DELAYS):
            metrics.ALARMS_GIVEN_UP.labels(self.kind).inc()
            log.error("alarm of %s %s failed %d times; giving up: %s", self.kind, key, attempt, failed)
            await msg.term()
            return
        delay = RETRY_DELAYS[attempt - 1]
        metrics.ALARM_RETRIES.labels(self.kind).inc()
        log.warning("alarm of %s %s failed (%s); retrying in %d s", self.kind, key, failed, delay)
        await msg.nak(delay=delay)
