"""Partition leases on a real nats-server: few writes when idle, convergence after the watch
goes stale, and a lease bucket that is deleted or damaged is made again."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import pytest
from nats.js.api import KeyValueConfig, StorageType

from services.runtime.leases import PartitionLeases, partition_owners
from services.runtime.natsserver import NatsServerProcess
from tests.support import eventually

PARTITIONS = 16


@asynccontextmanager
async def replica(url: str, kind: str, ttl: float = 1.0) -> AsyncIterator[PartitionLeases]:
    """One replica's leases on its own connection (the callbacks only count)."""
    nc = await nats.connect(url)
    served: set[int] = set()

    async def acquired(p: int) -> None:
        served.add(p)

    async def released(p: int) -> None:
        served.discard(p)

    leases = PartitionLeases(nc, kind, PARTITIONS, acquired, released, ttl=ttl)
    leases.served = served  # type: ignore[attr-defined]
    await leases.start()
    try:
        yield leases
    finally:
        await leases.stop()
        await nc.close()


def new_kind() -> str:
    return f"lt{uuid.uuid4().hex[:8]}"


async def everything_owned(nc, kind: str, replicas: list[PartitionLeases]) -> bool:
    """Every partition has a live owner on the server, and that owner serves it."""
    owners = await partition_owners(nc, kind)  # {} while the bucket cannot be read
    serving = {p: r.replica_id for r in replicas for p in r.served}  # type: ignore[attr-defined]
    return len(owners) == PARTITIONS and owners == serving


async def test_an_idle_replica_writes_one_heartbeat_per_interval(nats_server, nc):
    # Three replicas share the partitions; once settled, count the bucket's writes.
    kind = new_kind()
    async with replica(nats_server.url, kind) as a, replica(nats_server.url, kind) as b, \
            replica(nats_server.url, kind) as c:
        # Settled: every partition owned and each replica at its share. Owned alone came
        # while the last replica was still taking its share (partitions moving in the
        # window: 22.5 writes/s once in a full run).
        async def settled() -> bool:
            shares = [len(r.served) for r in (a, b, c)]  # type: ignore[attr-defined]
            return min(shares) >= PARTITIONS // 3 and await everything_owned(nc, kind, [a, b, c])

        await eventually(settled, 10)
        js = nc.jetstream()
        before = (await js.stream_info(f"KV_leases-{kind}")).state.last_seq
        started = time.monotonic()
        await asyncio.sleep(2.0)  # measuring a rate over a fixed window, not waiting
        info = await js.stream_info(f"KV_leases-{kind}")
        rate = (info.state.last_seq - before) / (time.monotonic() - started)
    # A heartbeat every TTL/4 per replica (3 x 4/s); renewing each partition too was ~67/s.
    assert rate <= 3 * 4 * 1.5, f"{rate:.1f} writes/s"
    # Leases are ephemeral: held in memory, in a bounded bucket.
    assert info.config.storage == StorageType.MEMORY and 0 < (info.config.max_bytes or 0) <= 8 << 20


async def test_a_replica_whose_watch_went_stale_still_takes_its_partitions(nats_server, nc):
    # Two replicas share the partitions.
    kind = new_kind()
    async with replica(nats_server.url, kind) as a:
        async with replica(nats_server.url, kind) as b:
            await eventually(lambda: everything_owned(nc, kind, [a, b]), 10)
            # The server stops feeding the watches (as when a paused replica's watch is
            # dropped): every consumer of the bucket goes.
            js = nc.jetstream()
            for consumer in await js.consumers_info(f"KV_leases-{kind}"):
                await js.delete_consumer(f"KV_leases-{kind}", consumer.name)
        # b leaves and hands its partitions over; a must notice without its watch.
        await eventually(
            lambda: everything_owned(nc, kind, [a]), 5,
            lambda: f"a serves {sorted(a.served)}",  # type: ignore[attr-defined]
        )


async def test_a_deleted_lease_bucket_is_made_again(nats_server, nc):
    kind = new_kind()
    async with replica(nats_server.url, kind) as a:
        await eventually(lambda: everything_owned(nc, kind, [a]), 10)
        # Someone deletes the bucket under the running replica.
        await nc.jetstream().delete_key_value(f"leases-{kind}")
        # It is made again, and the replica owns every partition again.
        await eventually(lambda: everything_owned(nc, kind, [a]), 10, "bucket made again")


async def test_a_damaged_lease_bucket_on_disk_is_replaced(tmp_path):
    # An older data dir: the lease bucket on disk, with leases in it.
    store = tmp_path / "nats"
    server = NatsServerProcess(store, partitions=PARTITIONS).start()
    kind = new_kind()
    try:
        nc = await nats.connect(server.url)
        kv = await nc.jetstream().create_key_value(
            KeyValueConfig(bucket=f"leases-{kind}", history=1, storage=StorageType.FILE)
        )
        for p in range(PARTITIONS):
            await kv.put(f"partitions.{p}", b"a-replica-long-gone")
        await nc.close()
    finally:
        server.stop()
    # Its files are damaged between runs (as two servers on one store dir did).
    stream_dir = next(store.rglob(f"KV_leases-{kind}"))
    for path in stream_dir.rglob("*"):
        if path.is_file() and path.name != "meta.inf":
            path.write_bytes(b"\x00garbage" * 64)
    # The next run's replica comes up and owns every partition.
    server = NatsServerProcess(store, partitions=PARTITIONS, port=0).start()
    try:
        nc = await nats.connect(server.url)
        async with replica(server.url, kind) as a:
            await eventually(lambda: everything_owned(nc, kind, [a]), 15)
        await nc.close()
    finally:
        server.stop()


@pytest.mark.parametrize("ttl", [0.5])
def test_a_lease_ttl_under_a_second_is_refused(ttl):
    with pytest.raises(ValueError, match="at least 1 s"):
        PartitionLeases(None, "x", 1, None, None, ttl=ttl)  # type: ignore[arg-type]
