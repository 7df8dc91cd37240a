"""Partition leases: exactly one live owner per partition, moved as replicas come and go.

Replicas of a service share one JetStream KV bucket, `leases-<kind>` (in memory: leases are
ephemeral, and a lost bucket is simply created again):

- `members.<replica>`: each live replica's heartbeat, renewed by compare-and-set on its own
  revision and written with a per-key TTL, so the *server* expires a replica that stops;
- `partitions.<n>`: who owns partition n, written by compare-and-set when a replica claims it.

A replica's claim on a partition lives as long as its membership does: a partition whose
owner is not a live member is free. So an idle replica writes one heartbeat per interval,
not one renewal per partition. The partition key's revision is the fencing token. The
owner keeps a local deadline (the time it sent its last heartbeat that renewed an unbroken
membership, plus the TTL) and refuses to write past it. A heartbeat whose compare-and-set
fails means the membership lapsed on the server (the replica was paused or cut off): it
joins again and must claim each partition again by compare-and-set before it writes, so a
replica that took one meanwhile keeps it. The expected-sequence check on every append is the
last line behind that.

The watch of the bucket is a cache. It is checked against the replica's own writes (a
heartbeat the watch does not show within two intervals means the watch is stale: it is
started again), and a claim refused by compare-and-set re-reads the key from the server.
A bucket that is missing or keeps failing is created again.

Every replica computes the same assignment from the live members (sorted, round-robin), so
the spread is even. A replica that should no longer own a partition hands it over: it stops
taking commands, finishes those in flight, then deletes the key so the new owner takes it
at once. A replica that dies simply stops its heartbeat; the server expires its membership
after the TTL and the desired owners take its partitions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from services.runtime import metrics
from services.runtime.eventstore import DirectGetError, direct_get

log = logging.getLogger(__name__)

MEMBERS = "members."
PARTITIONS = "partitions."
BUCKET_BYTES = 8 << 20  # a bucket holds a few hundred small keys; bounded all the same
FAILURES_BEFORE_RECREATE = 5  # consecutive failed cycles before the bucket is made again...
# ...and for at least this long: on a cluster a bucket without a leader (a Raft election,
# 4-9 s; a frozen leader, until its peers notice) fails every write, and making the bucket
# again then would make every owner of the kind step down. A bucket that is gone is told
# apart at once (its stream is not found) and made again without waiting.
FAILING_BEFORE_RECREATE = 30.0
RENEW_AT_MOST_EVERY = 1.5  # s between heartbeats at most, whatever the TTL
_WRONG_LAST_SEQUENCE = 10071


def new_replica_id() -> str:
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:20]
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


def assignment(members: list[str], partitions: int) -> dict[int, str]:
    """The owner each partition should have: round-robin over the sorted live members."""
    ordered = sorted(members)
    return {p: ordered[p % len(ordered)] for p in range(partitions)}


def lease_bucket(kind: str) -> str:
    return f"leases-{kind}"


@dataclass
class HeldLease:
    revision: int  # the fencing token: the partition key's revision of our claim
    membership: int  # the membership it was claimed in; valid only while that one lasts


@dataclass
class _Seen:
    revision: int
    owner: str | None  # None: deleted, purged or expired (a marker)


class LeaseBucketMissing(Exception):
    """The lease bucket's stream is gone (deleted, or lost with a server in memory)."""


class PartitionLeases:
    """Claims, keeps and hands over the partitions of one object kind for this replica."""

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
        self.ttl = float(int(ttl))  # the server's TTL is whole seconds
        # A heartbeat at least every 1.5 s: with a TTL above a Raft election (a cluster's
        # 15 s), the last heartbeat before the lease bucket loses its leader leaves more
        # than the election's length of deadline, so owners write on through it.
        self.renew_every = min(self.ttl / 4, RENEW_AT_MOST_EVERY)
        self.replica_id = replica_id or new_replica_id()
        self.bucket_replicas = replicas
        self.held: dict[int, HeldLease] = {}
        self.view: dict[str, _Seen] = {}
        self.bucket = lease_bucket(kind)
        self.stream = f"KV_{self.bucket}"
        self.kv: KeyValue | None = None
        self._changed = asyncio.Event()
        self._synced = asyncio.Event()  # the watch delivered the bucket's current values
        self._tasks: list[asyncio.Task] = []
        self._watch_task: asyncio.Task | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._lock = asyncio.Lock()  # one cycle, hand-over or step-down at a time
        self._stopping = False
        # Membership: our member key's revision, which unbroken membership we are in (it
        # grows each time we join again), and until when we may write (local monotonic).
        self._member_revision: int | None = None
        self._membership = 0
        self._deadline = 0.0
        self._heartbeat_due = 0.0
        # The oldest heartbeat the watch has not shown yet: (revision, sent at).
        self._unseen: tuple[int, float] | None = None
        self._failures = 0
        self._failing_since: float | None = None
        self.stats = LeaseStats()
        metrics.PARTITIONS_OWNED.labels(kind, self.replica_id).set_function(lambda: len(self.held))
        self._moves = metrics.LEASE_MOVES

    # --- public ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._open_bucket()
        await self._start_watch()
        self._tasks = [asyncio.create_task(self._run(), name=f"leases {self.kind} cycle")]

    async def stop(self) -> None:
        """Leave cleanly: hand every partition over now, not after the TTL."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        async with self._lock:
            try:  # first leave the membership, so nobody assigns us partitions again
                await self._bucket().delete(MEMBERS + self.replica_id)
            except (nats.errors.Error, TimeoutError):
                pass
            for partition in sorted(self.held):
                await self._hand_over(partition)
        await self._stop_watch()

    def valid(self, partition: int) -> bool:
        """True while this replica may write for `partition` (checked before every append)."""
        lease = self.held.get(partition)
        return (
            lease is not None
            and lease.membership == self._membership
            and time.monotonic() < self._deadline
        )

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
            if partition in self.held and not self.valid(partition):  # not claimed again since
                del self.held[partition]
                self._moves.labels(self.kind, "lapsed").inc()
                log.warning("%s: lease on partition %d lapsed; stepping down", self.replica_id, partition)
                await self.on_released(partition)

    # --- the bucket and its watch ----------------------------------------------------------

    async def _open_bucket(self) -> None:
        """The lease bucket, created if absent; a file-backed one (older versions) is made
        again in memory: leases are ephemeral, and a damaged file store must not hold them."""
        try:
            info = await self.js.stream_info(self.stream)
            if info.config.storage == StorageType.MEMORY:
                self.kv = await self.js.key_value(self.bucket)
                return
            log.warning("%s: lease bucket %s is on disk; making it again in memory", self.replica_id, self.bucket)
            await self._delete_bucket()
        except nats.js.errors.NotFoundError:
            pass
        except (nats.errors.TimeoutError, TimeoutError):
            # A damaged stream can make the server too busy to describe it: leases are
            # ephemeral, so it is replaced rather than waited for.
            log.warning("%s: lease bucket %s does not answer; making it again", self.replica_id, self.bucket)
            await self._delete_bucket()
        try:
            self.kv = await self.js.create_key_value(
                KeyValueConfig(
                    bucket=self.bucket,
                    history=1,
                    storage=StorageType.MEMORY,
                    replicas=self.bucket_replicas,
                    max_bytes=BUCKET_BYTES,
                    direct=True,
                    limit_marker_ttl=self.ttl,
                )
            )
        except nats.js.errors.BadRequestError:  # another replica made it meanwhile
            self.kv = await self.js.key_value(self.bucket)

    async def _delete_bucket(self) -> None:
        try:
            await self.js.delete_stream(self.stream)
        except (nats.js.errors.NotFoundError, nats.errors.TimeoutError, TimeoutError):
            pass

    async def _start_watch(self) -> None:
        self._synced.clear()
        self.view = {}
        self._unseen = None
        self._watcher = await self._bucket().watchall()
        self._watch_task = asyncio.create_task(self._watch(self._watcher), name=f"leases {self.kind} watch")
        try:  # decide nothing on a partial view: an owner not seen yet would look dead
            await asyncio.wait_for(self._synced.wait(), 5)
        except TimeoutError:
            log.warning("%s: lease watch of %s gave no initial values in 5 s", self.replica_id, self.bucket)

    async def _stop_watch(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except (nats.errors.Error, TimeoutError):
                pass
        self._watcher = self._watch_task = None

    async def _restart_watch(self, why: str) -> None:
        log.warning("%s: %s; watching %s again", self.replica_id, why, self.bucket)
        self.stats.watch_restarts += 1
        await self._stop_watch()
        await self._start_watch()

    async def _watch(self, watcher: KeyValue.KeyWatcher) -> None:
        own = MEMBERS + self.replica_id
        async for entry in watcher:
            if entry is None:  # end of the initial values
                self._synced.set()
                self._changed.set()
                continue
            deleted = entry.operation in ("DEL", "PURGE") or not entry.value
            self.view[entry.key] = _Seen(entry.revision, None if deleted else entry.value.decode())
            if entry.key == own and self._unseen is not None and entry.revision >= self._unseen[0]:
                self._unseen = None
            self._changed.set()

    async def _recover(self, why: str, *, recreate: bool) -> None:
        """The bucket is gone or unusable: step down from everything (tokens of a lost bucket
        mean nothing), make the bucket again, and start over with a fresh membership."""
        log.warning("%s: %s; recreating lease bucket %s", self.replica_id, why, self.bucket)
        self.stats.recreated += 1
        for partition in sorted(self.held):
            del self.held[partition]
            await self.on_released(partition)
        self._member_revision = None
        self._deadline = 0.0
        self._heartbeat_due = 0.0
        await self._stop_watch()
        if recreate:
            await self._delete_bucket()
        await self._open_bucket()
        await self._start_watch()

    # --- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            self._changed.clear()  # before the cycle: a change seen during it wakes the next
            try:
                async with self._lock:
                    await self._cycle()
                self._failures = 0
                self._failing_since = None
            except (LeaseBucketMissing, nats.js.errors.NotFoundError, nats.errors.NoRespondersError) as exc:
                await self._guarded(self._recover(f"lease bucket missing ({exc!r})", recreate=False))
            except (TimeoutError, nats.errors.Error) as exc:
                self._failures += 1
                metrics.LEASE_RENEW_FAILURES.labels(self.kind).inc()
                now = time.monotonic()
                self._failing_since = self._failing_since or now
                log.warning("%s: lease cycle failed (%r); retrying", self.replica_id, exc)
                if (self._failures >= FAILURES_BEFORE_RECREATE
                        and now - self._failing_since >= FAILING_BEFORE_RECREATE):
                    self._failures = 0
                    self._failing_since = None
                    await self._guarded(
                        self._recover(f"{FAILURES_BEFORE_RECREATE} lease cycles failed", recreate=True)
                    )
            try:
                await asyncio.wait_for(self._changed.wait(), self.renew_every)
            except TimeoutError:
                pass

    async def _guarded(self, recovery: Awaitable[None]) -> None:
        try:
            async with self._lock:
                await recovery
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("%s: recovering the lease bucket failed (%r); retrying", self.replica_id, exc)

    async def _cycle(self) -> None:
        # Write only what is due: a cycle runs on every change in the bucket, and a write
        # on every cycle would wake every other replica, which would write, and so on.
        now = time.monotonic()
        if self._unseen is not None and now - self._unseen[1] > max(2 * self.renew_every, 1.0):
            await self._restart_watch("the lease watch did not show our own heartbeat")
        if now >= self._heartbeat_due:
            await self._heartbeat()
        if time.monotonic() >= self._deadline:
            return  # not a confirmed member: claim nothing
        members = self.live_members()
        desired = assignment(members, self.partitions)
        for partition in range(self.partitions):
            key = PARTITIONS + str(partition)
            seen = self.view.get(key)
            lease = self.held.get(partition)
            if lease is not None:
                if seen is not None and seen.revision > lease.revision:
                    await self._step_down(partition)  # someone took it while we were away
                elif desired[partition] != self.replica_id:
                    await self._hand_over(partition)
                elif lease.membership != self._membership:
                    await self._claim(partition, lease.revision)  # our membership lapsed
            elif desired[partition] == self.replica_id and self._free(seen, members):
                await self._claim(partition, seen.revision if seen else 0)

    def _free(self, seen: _Seen | None, members: list[str]) -> bool:
        """Nobody live holds it: absent, deleted, ours from before, or a dead member's."""
        return seen is None or seen.owner is None or seen.owner == self.replica_id or seen.owner not in members

    async def _heartbeat(self) -> None:
        key = MEMBERS + self.replica_id
        sent = time.monotonic()
        try:
            revision = await self._put(key, self.replica_id, self._member_revision, ttl=True)
        except nats.js.errors.KeyWrongLastSequenceError:
            # Our membership lapsed on the server (paused or cut off past the TTL); others may
            # have taken our partitions. Join again; every partition must be claimed again.
            log.warning("%s: membership of %s lapsed; joining again", self.replica_id, self.bucket)
            self.stats.lapses += 1
            revision = await self._put(key, self.replica_id, None, ttl=True)
            self._membership += 1
        if self._member_revision is None:
            self._membership += 1  # the first heartbeat of a membership
        self._member_revision = revision
        metrics.LEASE_RENEW_SECONDS.labels(self.kind).observe(time.monotonic() - sent)
        self._deadline = sent + self.ttl
        self._heartbeat_due = sent + self.renew_every
        if self._unseen is None:
            self._unseen = (revision, sent)

    async def _claim(self, partition: int, last: int) -> None:
        """Take `partition` by compare-and-set on revision `last` (0: absent)."""
        key = PARTITIONS + str(partition)
        again = partition in self.held
        try:
            revision = await self._put(key, self.replica_id, last, ttl=False)
        except nats.js.errors.KeyWrongLastSequenceError:
            if again:
                await self._step_down(partition)
            await self._reread(key)  # our view of the key was stale; see what is there
            return
        self.held[partition] = HeldLease(revision, self._membership)
        if again:
            log.info("%s: claimed partition %d again (token %d)", self.replica_id, partition, revision)
            return
        self._moves.labels(self.kind, "acquired").inc()
        log.info("%s: owns partition %d (token %d)", self.replica_id, partition, revision)
        await self.on_acquired(partition)

    async def _reread(self, key: str) -> None:
        try:
            msg = await self.js.get_msg(self.stream, subject=f"$KV.{self.bucket}.{key}")
        except nats.js.errors.NotFoundError:
            self.view[key] = _Seen(0, None)  # nothing there (an expired marker, say)
            return
        revision = msg.seq or 0
        current = self.view.get(key)
        if current is None or revision >= current.revision:
            self.view[key] = _Seen(revision, msg.data.decode() if msg.data else None)

    async def _hand_over(self, partition: int) -> None:
        lease = self.held.pop(partition)
        await self.on_released(partition)  # stop taking commands, finish those in flight
        try:
            await self._bucket().delete(PARTITIONS + str(partition), last=lease.revision)
        except (nats.errors.Error, TimeoutError):
            pass  # taken meanwhile; nothing to release
        self._moves.labels(self.kind, "handed_over").inc()
        log.info("%s: handed partition %d over", self.replica_id, partition)

    async def _step_down(self, partition: int) -> None:
        if self.held.pop(partition, None) is not None:
            self._moves.labels(self.kind, "stepped_down").inc()
            log.warning("%s: lost partition %d; stepping down", self.replica_id, partition)
            await self.on_released(partition)

    def _bucket(self) -> KeyValue:
        assert self.kv is not None, "start() first"
        return self.kv

    async def _put(self, key: str, value: str, last: int | None, *, ttl: bool) -> int:
        """Write `key`; `last` is the revision it must follow (0: absent, None: any)."""
        headers = {}
        if last is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(last)
        self.stats.writes += 1
        try:
            ack = await self.js.publish(
                f"$KV.{self.bucket}.{key}", value.encode(), headers=headers,
                msg_ttl=self.ttl if ttl else None,
            )
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                raise nats.js.errors.KeyWrongLastSequenceError(description=exc.description) from exc
            raise
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError) as exc:
            # No stream answered: the bucket is gone, or (on a cluster) it has no leader for
            # the moment. Only a bucket that is gone is made again.
            if await self._bucket_gone():
                raise LeaseBucketMissing(self.bucket) from exc
            raise
        return ack.seq

    async def _bucket_gone(self) -> bool:
        try:
            await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            return True
        except (nats.errors.Error, TimeoutError):
            return False  # no answer: an election, a frozen leader; not proof it is gone
        return False


@dataclass
class LeaseStats:
    writes: int = 0
    lapses: int = 0
    watch_restarts: int = 0
    recreated: int = 0


@dataclass
class LeaseCoverage:
    """Who owns what in a kind's lease bucket, as the server has it now."""

    kind: str
    members: set[str] = field(default_factory=set)
    owners: dict[int, str] = field(default_factory=dict)  # partitions with a live owner

    def unowned(self, partitions: int) -> list[int]:
        return [p for p in range(partitions) if p not in self.owners]


async def lease_coverage(nc: NATS, kind: str) -> LeaseCoverage:
    """The live members and the partitions a live member owns, read from the server by one
    batched direct get (no consumer). Raises DirectGetError if the bucket cannot be read."""
    bucket = lease_bucket(kind)
    prefix = f"$KV.{bucket}."
    latest: dict[str, bytes] = {}
    async for message in direct_get(nc, f"KV_{bucket}", subject=prefix + ">"):
        latest[message.subject[len(prefix):]] = message.data
    coverage = LeaseCoverage(kind)
    coverage.members = {k[len(MEMBERS):] for k, v in latest.items() if k.startswith(MEMBERS) and v}
    for key, value in latest.items():
        if key.startswith(PARTITIONS) and value and value.decode() in coverage.members:
            coverage.owners[int(key[len(PARTITIONS):])] = value.decode()
    return coverage


async def partition_owners(nc: NATS, kind: str) -> dict[int, str]:
    """Who holds each partition's lease right now (partitions with no live owner are absent)."""
    try:
        return (await lease_coverage(nc, kind)).owners
    except (DirectGetError, nats.errors.Error, TimeoutError):
        return {}
