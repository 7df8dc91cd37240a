"""Read-only questions a running service answers about its objects, outside their mailboxes.

Every replica of a service subscribes to `durachat.admin.<kind>` (no queue group: all of them
answer) for each kind it hosts. A request's body is JSON:

- `{"op": "objects"}`: the objects resident on this replica (key, partition, mailbox depth,
  version = the last commit's subject sequence, idle seconds, alarm);
- `{"op": "inspect", "key": K}`: object K on this replica: resident or not, its partition
  and whether this replica owns it (with the lease token), last commit, events since the
  snapshot, alarm, idle time, and its state as JSON (the cached state, as a snapshot of it
  would store it).

Answers are read from the host's memory in the subscription's callback: nothing enters a
mailbox, nothing waits for a batch, nothing is written. `gather()` (the CLI's side) sends
one request and collects every replica's answer for a short window.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.domain import Snapshot
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.keys import InvalidKey, subject_token
from services.runtime.micro import EndpointCounts

if TYPE_CHECKING:
    from services.runtime.service import HostedKind

log = logging.getLogger(__name__)


def admin_subject(kind: str) -> str:
    return f"durachat.admin.{kind}"


def plain(value: Any) -> Any:
    """`value` as plain JSON values: dataclasses and objects as their fields, times as ISO
    text, ids and decimals as strings, sets as sorted lists; anything else as its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((plain(v) for v in value), key=repr)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (UUID, Decimal)):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "__dict__"):
        return plain(vars(value))
    return repr(value)


def state_json(host: Any, state: Any) -> Any:
    """An object's state as JSON: the fields a snapshot of it would store, as plain values."""
    if state is None:
        return None
    if host.kind.durable:
        return plain(Snapshot.take(state).state)
    return plain(state)


class AdminResponder:
    """Answers `durachat.admin.<kind>` for every kind a running service hosts."""

    def __init__(self, nc: NATS, replica_id: str, kinds: dict[str, HostedKind]) -> None:
        self.nc = nc
        self.replica_id = replica_id
        self.kinds = kinds
        self._subs: list[Subscription] = []
        self.counts: dict[str, EndpointCounts] = {}  # each kind's admin requests, in `$SRV.STATS`

    async def start(self) -> None:
        for name in self.kinds:
            self.counts[name] = EndpointCounts(f"admin-{name}", admin_subject(name))
            self._subs.append(await self.nc.subscribe(admin_subject(name), cb=self._on_request))

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be closing
                pass
        self._subs.clear()

    async def _on_request(self, msg: Msg) -> None:
        started = time.perf_counter_ns()
        kind = msg.subject.rsplit(".", 1)[1]
        try:
            request = json.loads(msg.data or b"{}")
            op = request.get("op")
            if op == "objects":
                answer: dict[str, Any] = {"objects": self.objects(kind)}
            elif op == "inspect" and isinstance(request.get("key"), str):
                answer = self.inspect(kind, request["key"])
            else:
                answer = {"error": f"unknown request {request!r}: op is 'objects' or 'inspect' with a key"}
        except (ValueError, AttributeError, InvalidKey) as exc:
            answer = {"error": f"bad request: {exc}"}
        except Exception as exc:  # a read-only view must never take the service down
            log.exception("admin request on %s failed", msg.subject)
            answer = {"error": f"failed: {exc!r}"}
        answer.update(replica=self.replica_id, kind=kind)
        if msg.reply:
            await self.nc.publish(msg.reply, json.dumps(answer, default=str).encode())
        if counts := self.counts.get(kind):
            error = answer.get("error")
            counts.record(time.perf_counter_ns() - started, str(error) if error else None)

    def objects(self, kind: str) -> list[dict[str, Any]]:
        host = self.kinds[kind].host
        now = time.monotonic()
        return [
            {
                "key": m.key,
                "partition": m.partition,
                "mailbox": m.queue.qsize(),
                "version": m.sequence,
                "loaded": m.loaded,
                "idle_seconds": round(now - m.last_active, 3),
                "alarm": m.alarm,
            }
            for m in list(host._mailboxes.values())
        ]

    def inspect(self, kind: str, key: str) -> dict[str, Any]:
        hosted = self.kinds[kind]
        host = hosted.host
        subject_token(key)  # a key the bus can carry, else InvalidKey
        mailbox = host._mailboxes.get(key)
        partitions = sorted(host.partitions)
        answer: dict[str, Any] = {
            "key": key,
            "resident": mailbox is not None,
            "partitions_served": partitions,
        }
        if hosted.leases is not None:
            answer["lease_tokens"] = {str(p): hosted.leases.token(p) for p in partitions}
        if mailbox is None:
            return answer
        answer.update(
            partition=mailbox.partition,
            owns_partition=mailbox.partition in host.partitions,
            mailbox=mailbox.queue.qsize(),
            loaded=mailbox.loaded,
            version=mailbox.sequence,
            last_commit_at=mailbox.last_commit_at,
            events_since_snapshot=mailbox.unsnapshotted,
            snapshot_every=host.snapshot_every,
            alarm=mailbox.alarm,
            idle_seconds=round(time.monotonic() - mailbox.last_active, 3),
            state=state_json(host, mailbox.state) if mailbox.loaded else None,
        )
        return answer


async def gather(
    nc: NATS, kind: str, request: dict[str, Any], window: float = 0.5, expect: int | None = None
) -> list[dict[str, Any]]:
    """Every replica's answer to `request` on kind `kind`: those that come within `window`
    seconds (sooner once `expect` answers are in)."""
    inbox = nc.new_inbox()
    answers: list[dict[str, Any]] = []
    enough = asyncio.Event()

    async def collect(msg: Msg) -> None:
        try:
            answers.append(json.loads(msg.data))
        except ValueError:
            return
        if expect is not None and len(answers) >= expect:
            enough.set()

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(admin_subject(kind), json.dumps(request).encode(), reply=inbox)
        await nc.flush()
        try:
            await asyncio.wait_for(enough.wait(), window)
        except TimeoutError:
            pass
    finally:
        await sub.unsubscribe()
    return sorted(answers, key=lambda a: str(a.get("replica")))
