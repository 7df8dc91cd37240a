"""Partition leases: exactly one live owner per partition, moved as replicas come and go.

Replicas of a service share one JetStream KV bucket, `leases-<kind>`:

- `members.<replica>`: each live replica's heartbeat, written with a per-key TTL;
- `partitions.<n>`: the lease on partition n, its value the owner's replica id.

A lease is created only if absent (or expired), renewed by compare-and-set on its revision,
and carries a per-key TTL, so the *server* expires it: no replica judges another by its own
clock. The revision is the fencing token. The owner also keeps a local deadline (the time it
sent the renewal plus the TTL) and refuses to write past it, so a paused owner that wakes
up steps down instead of writing; the expected-sequence check on every append is the last
line behind that.

Every replica computes the same assignment from the live members (sorted, round-robin), so
the spread is even. A replica that should no longer own a partition hands it over: it stops
taking commands, finishes those in flight, then deletes the lease so the new owner takes it
at once. A replica that dies simply stops renewing; the server expires its leases after
the TTL and the desired owners take them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

MEMBERS = "members."
PARTITIONS = "partitions."


def new_replica_id() -> str:
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:20]
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


def assignment(members: list[str], partitions: int) -> dict[int, str]:
    """The owner each partition should have: round-robin over the sorted live members."""
    ordered = sorted(members)
    return {p: ordered[p % len(ordered)] for p in range(partitions)}


@dataclass
class HeldLease:
    revision: int  # the fencing token
    valid_until: float  # local monotonic deadline: renewal sent + TTL


@dataclass
class _Seen:
    revision: int
    owner: str | None  # None: deleted, purged or expired (a marker)


class PartitionLeases:
    """Claims, renews and hands over the partitions of one object kind for this replica."""

    def __init__(
        self,
        nc: NATS,
        kind: str,
        partitions: int,
        on_acquired: Callable[[int], Awaitable[None]],
        on_released: Callable[[int], Awaitable[None]],
        *,
        ttl: float = 3.0,
        replica_id: str | None = None,
        replicas: int = 1,
    ) -> None:
        if ttl < 1:
            raise ValueError("the lease TTL is at least 1 s (the server's TTL granularity)")
        self.nc = nc
        self.js = nc.jetstream()
        self.kind = kind
        self.partitions = partitions
        self.on_acquired = on_acquired
        self.on_released = on_released
        self.ttl = ttl
        self.renew_every = ttl / 4
        self.replica_id = replica_id or new_replica_id()
        self.bucket_replicas = replicas
        self.held: dict[int, HeldLease] = {}
        self.view: dict[str, _Seen] = {}
        self.bucket = f"leases-{kind}"
        self.kv: KeyValue | None = None
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._lock = asyncio.Lock()  # one cycle, hand-over or step-down at a time
        self._stopping = False
        self._heartbeat_due = 0.0

    # --- public ----------------------------------------------------------------------------

    async def start(self) -> None:
        bucket = self.bucket
        try:
            self.kv = await self.js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            self.kv = await self.js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    history=1,
                    storage=StorageType.FILE,
                    replicas=self.bucket_replicas,
                    limit_marker_ttl=max(self.ttl, 1.0),
                )
            )
        watcher = await self.kv.watchall()
        self._tasks = [
            asyncio.create_task(self._watch(watcher), name=f"leases {self.kind} watch"),
            asyncio.create_task(self._run(), name=f"leases {self.kind} cycle"),
        ]

    async def stop(self) -> None:
        """Leave cleanly: hand every partition over now, not after the TTL."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        async with self._lock:
            try:  # first leave the membership, so nobody assigns us partitions again
                await self._bucket().delete(MEMBERS + self.replica_id)
            except nats.js.errors.Error:
                pass
            for partition in sorted(self.held):
                await self._hand_over(partition)

    def valid(self, partition: int) -> bool:
        """True while this replica may write for `partition` (checked before every append)."""
        lease = self.held.get(partition)
        return lease is not None and time.monotonic() < lease.valid_until

    def token(self, partition: int) -> int | None:
        lease = self.held.get(partition)
        return lease.revision if lease else None

    def live_members(self) -> list[str]:
        members = {
            key[len(MEMBERS):]
            for key, seen in self.view.items()
            if key.startswith(MEMBERS) and seen.owner is not None
        }
        members.add(self.replica_id)
        return sorted(members)

    async def lost(self, partition: int) -> None:
        """Step down from a partition whose lease lapsed, without touching the lease key."""
        async with self._lock:
            if self.held.pop(partition, None) is not None:
                log.warning("%s: lease on partition %d lapsed; stepping down", self.replica_id, partition)
                await self.on_released(partition)

    # --- the loop ----------------------------------------------------------------------------

    async def _watch(self, watcher) -> None:
        async for entry in watcher:
            if entry is None:  # end of the initial values
                self._changed.set()
                continue
            deleted = entry.operation in ("DEL", "PURGE") or not entry.value
            self.view[entry.key] = _Seen(entry.revision, None if deleted else entry.value.decode())
            self._changed.set()

    async def _run(self) -> None:
        while not self._stopping:
            self._changed.clear()  # before the cycle: a change seen during it wakes the next
            try:
                async with self._lock:
                    await self._cycle()
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("%s: lease cycle failed (%s); retrying", self.replica_id, exc)
            try:
                await asyncio.wait_for(self._changed.wait(), self.renew_every)
            except TimeoutError:
                pass

    async def _cycle(self) -> None:
        # Write only what is due: a cycle runs on every change in the bucket, and a write
        # on every cycle would wake every other replica, which would write, and so on.
        now = time.monotonic()
        if now >= self._heartbeat_due:
            await self._put_with_ttl(MEMBERS + self.replica_id, self.replica_id, last=None)
            self._heartbeat_due = now + self.renew_every
        desired = assignment(self.live_members(), self.partitions)
        for partition in range(self.partitions):
            key = PARTITIONS + str(partition)
            seen = self.view.get(key)
            if partition in self.held:
                if seen is not None and seen.owner not in (None, self.replica_id):
                    await self._step_down(partition)  # someone took it while we were away
                elif desired[partition] != self.replica_id:
                    await self._hand_over(partition)
                elif self.held[partition].valid_until - now < self.ttl - self.renew_every:
                    await self._renew(partition)
            elif desired[partition] == self.replica_id and (seen is None or seen.owner is None):
                await self._acquire(partition, last=seen.revision if seen else 0)

    async def _acquire(self, partition: int, last: int) -> None:
        sent = time.monotonic()
        try:
            revision = await self._put_with_ttl(PARTITIONS + str(partition), self.replica_id, last)
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # someone else got it first; the next cycle sees who
        self.held[partition] = HeldLease(revision, sent + self.ttl)
        log.info("%s: owns partition %d (token %d)", self.replica_id, partition, revision)
        await self.on_acquired(partition)

    async def _renew(self, partition: int) -> None:
        lease = self.held[partition]
        sent = time.monotonic()
        try:
            revision = await self._put_with_ttl(
                PARTITIONS + str(partition), self.replica_id, lease.revision
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            await self._step_down(partition)
            return
        if sent >= lease.valid_until:
            # We were paused past our own deadline: the server may have expired the lease and
            # a new owner may have written since; the renewal only worked because nobody took
            # it yet. Keep it, but drop cached objects: they are rebuilt from the streams.
            await self.on_released(partition)
            await self.on_acquired(partition)
        self.held[partition] = HeldLease(revision, sent + self.ttl)

    async def _hand_over(self, partition: int) -> None:
        lease = self.held.pop(partition)
        await self.on_released(partition)  # stop taking commands, finish those in flight
        try:
            await self._bucket().delete(PARTITIONS + str(partition), last=lease.revision)
        except nats.js.errors.Error:
            pass  # it lapsed meanwhile; nothing to release
        log.info("%s: handed partition %d over", self.replica_id, partition)

    async def _step_down(self, partition: int) -> None:
        if self.held.pop(partition, None) is not None:
            log.warning("%s: lost partition %d; stepping down", self.replica_id, partition)
            await self.on_released(partition)

    def _bucket(self) -> KeyValue:
        assert self.kv is not None, "start() first"
        return self.kv

    async def _put_with_ttl(self, key: str, value: str, last: int | None) -> int:
        """Write `key` with the lease TTL; `last` is the revision it must follow (0: absent)."""
        headers = {}
        if last is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(last)
        try:
            ack = await self.js.publish(
                f"$KV.{self.bucket}.{key}", value.encode(), headers=headers, msg_ttl=self.ttl
            )
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code == 10071:
                raise nats.js.errors.KeyWrongLastSequenceError(description=exc.description) from exc
            raise
        return ack.seq


async def partition_owners(nc: NATS, kind: str) -> dict[int, str]:
    """Who holds each partition's lease right now (partitions with no live lease are absent)."""
    try:
        kv = await nc.jetstream().key_value(f"leases-{kind}")
    except nats.js.errors.BucketNotFoundError:
        return {}
    owners: dict[int, str] = {}
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return {}
    for key in (k for k in keys if k.startswith(PARTITIONS)):
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            continue
        if entry.value:  # an expiry marker has no value
            owners[int(key[len(PARTITIONS):])] = entry.value.decode()
    return owners
