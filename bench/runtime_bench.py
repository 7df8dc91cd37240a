"""Object runtime figures: wake from eviction, failover after kill -9, rebalance on join.

    python -m bench.runtime_bench [--quick]

Everything runs on 127.0.0.1 with free ports and a temp dir; every process started here is
stopped by its PID at the end.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import sys
import time
import uuid
from pathlib import Path

import nats

from bench.measure import BenchRun, arguments, percentiles, print_figures
from contracts.room import Accepted, GetRoom, JoinRoom, PostMessage, RoomClient
from contracts.subjects import ROOM
from services.localsystem import LocalSystem
from services.room.main import SERVICE as ROOM_SERVICE
from services.runtime.leases import partition_owners
from services.runtime.natsserver import NatsServerProcess
from services.runtime.service import running_service


async def ask(nc, room: str, command, timeout: float = 10.0):
    return await RoomClient(nc, timeout=timeout).send(room, command)


# --- wake from eviction -------------------------------------------------------------------------


async def fill_room(nc, room: str, events: int) -> None:
    await ask(nc, room, JoinRoom(session_id="s1", name="bench"))
    sent = 2  # Created + MemberJoined
    while sent < events:
        chunk = min(500, events - sent)
        replies = await asyncio.gather(
            *(ask(nc, room, PostMessage(session_id="s1", text=f"m{sent + i}")) for i in range(chunk))
        )
        assert all(isinstance(r, Accepted) for r in replies)
        sent += chunk


async def wake_latency(url: str, partitions: int, events: int, wakes: int, snapshot_every: int):
    """p50/p99 of GetRoom on a room just evicted, and on the same room resident."""
    settings = ROOM_SERVICE.settings(
        nats_url=url, partitions=partitions, snapshot_every=snapshot_every
    )
    nc = await nats.connect(url)
    room = f"wake-{uuid.uuid4().hex[:8]}"
    # The room service by its own bootstrap, in this process (so it can evict on cue).
    async with running_service(ROOM_SERVICE, settings, lease=False) as running:
        host = running.host(ROOM)
        await fill_room(nc, room, events)
        woken, resident = [], []
        for _ in range(wakes):
            await host.evict(room)
            t = time.perf_counter()
            await ask(nc, room, GetRoom())
            woken.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await ask(nc, room, GetRoom())
            resident.append((time.perf_counter() - t) * 1000)
    await nc.drain()
    return woken, resident


# --- failover and rebalance -------------------------------------------------------------------


async def partition_of(nc, room: str) -> int:
    sub = await nc.subscribe(f"cmd.{ROOM}.*.{room}")
    await ask(nc, room, GetRoom(), timeout=15)
    msg = await sub.next_msg(timeout=5)
    await sub.unsubscribe()
    return int(msg.subject.split(".")[2])


async def wait_spread(nc, replicas: int, timeout: float = 30.0) -> float:
    """Seconds until all partitions are leased evenly by exactly `replicas` replicas."""
    start = time.monotonic()
    while True:
        counts = collections.Counter((await partition_owners(nc, ROOM)).values())
        if sum(counts.values()) == 16 and len(counts) == replicas:
            if max(counts.values()) - min(counts.values()) <= 1:
                return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"spread stuck at {counts}")
        await asyncio.sleep(0.02)


async def failover_times(system: LocalSystem, kills: int) -> list[float]:
    """Seconds from kill -9 of the room's owner to the first acknowledged post after it."""
    nc = await nats.connect(system.nats.url)
    room = f"failover-{uuid.uuid4().hex[:8]}"
    await wait_spread(nc, len(system.rooms))
    await ask(nc, room, JoinRoom(session_id="s1", name="bench"))
    partition = await partition_of(nc, room)
    times = []
    for n in range(kills):
        owner = (await partition_owners(nc, ROOM))[partition]
        (victim,) = [r for r in system.rooms if f"-{r.pid}-" in owner]
        victim.kill()
        killed = time.monotonic()
        while True:  # a client that retries every 20 ms until a post is acknowledged
            try:
                reply = await ask(nc, room, PostMessage(session_id="s1", text=f"k{n}"), timeout=0.5)
                if isinstance(reply, Accepted):
                    break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                pass
            await asyncio.sleep(0.02)
        times.append(time.monotonic() - killed)
        system.rooms.remove(victim)
        system.start_room()
        await wait_spread(nc, len(system.rooms))
    await nc.close()
    return times


async def rebalance_times(system: LocalSystem, joins: int) -> list[float]:
    """Seconds from starting a second replica to an even spread over both."""
    nc = await nats.connect(system.nats.url)
    times = []
    for _ in range(joins):
        await wait_spread(nc, 1)
        t = time.monotonic()
        extra = system.start_room()
        await wait_spread(nc, 2)
        times.append(time.monotonic() - t)
        extra.stop()
        system.rooms.remove(extra)
    await nc.close()
    return times


async def idle_lease_writes(system: LocalSystem, window: float) -> dict:
    """Writes per second to `KV_leases-room` and its growth on disk while nothing happens."""
    nc = await nats.connect(system.nats.url)
    js = nc.jetstream()
    stream = f"KV_leases-{ROOM}"
    await wait_spread(nc, system.room_replicas)

    def on_disk() -> int:
        return sum(
            f.stat().st_size for f in (system.data_dir / "nats").rglob("*")
            if f.is_file() and stream in str(f)
        )

    before, disk_before, started = await js.stream_info(stream), on_disk(), time.monotonic()
    await asyncio.sleep(window)  # an idle window: the measurement itself
    after, disk_after = await js.stream_info(stream), on_disk()
    elapsed = time.monotonic() - started
    await nc.close()
    return {
        "replicas": system.room_replicas,
        "writes_per_s": round((after.state.last_seq - before.state.last_seq) / elapsed, 1),
        "stream_msgs": after.state.messages,
        "stream_bytes": after.state.bytes,
        "disk_growth_kib_per_min": round((disk_after - disk_before) / elapsed * 60 / 1024),
        "storage": str(after.config.storage),
    }


def on_system(path: Path, replicas: int, measure):
    """`measure(system)` on a LocalSystem with `replicas` room services, stopped after."""
    system = LocalSystem(path, room_replicas=replicas)
    try:
        system.start()
        return asyncio.run(measure(system))
    finally:
        system.stop()


def main() -> int:
    parser = arguments("bench.runtime_bench", __doc__, quick="a short smoke run")
    parser.add_argument("--events", type=int, default=10_000)
    args = parser.parse_args()
    events = 1_000 if args.quick else args.events
    wakes = 20 if args.quick else 200
    kills = 2 if args.quick else 10
    joins = 2 if args.quick else 5
    figures: dict[str, dict] = {}

    with BenchRun(args, "durachat-bench-") as run:
        server = NatsServerProcess(run.tmp / "nats").start()
        try:
            for label, every in (("snapshots every 100", 100), ("no snapshots", 10**9)):
                woken, resident = asyncio.run(wake_latency(server.url, 16, events, wakes, every))
                figures[f"wake {events} events, {label}"] = {
                    "p50_ms": statistics.median(woken), "p99_ms": percentiles(woken)["p99"],
                    "resident_p50_ms": statistics.median(resident),
                    "resident_p99_ms": percentiles(resident)["p99"],
                }
        finally:
            server.stop()

        times = on_system(run.tmp / "failover", 2, lambda system: failover_times(system, kills))
        figures["failover after kill -9 (lease TTL 3 s)"] = {
            "kills": kills, "p50_s": statistics.median(times), "max_s": max(times),
        }
        figures["idle lease bucket (room, lease TTL 3 s)"] = on_system(
            run.tmp / "idle", 3, lambda system: idle_lease_writes(system, 5.0 if args.quick else 20.0)
        )
        times = on_system(run.tmp / "rebalance", 1, lambda system: rebalance_times(system, joins))
        figures["rebalance 1 -> 2 replicas"] = {
            "joins": joins, "p50_s": statistics.median(times), "max_s": max(times),
        }
        run.report.update(figures)
        print_figures(figures, "wake p99 <= 10 ms (10,000 events); failover max <= 5 s; "
                      "rebalance <= 10 s; idle lease writes <= 1 per replica per TTL/4")
    return run.status


if __name__ == "__main__":
    sys.exit(main())
