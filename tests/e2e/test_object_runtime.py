"""The object runtime's guarantees with real room replicas as processes: one owner per
partition, failover on kill -9, fencing of a paused owner, and scaling while traffic runs."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import uuid
from collections.abc import Iterator

import nats
import pytest

from contracts.keys import subject_token
from contracts.room import GetRoom
from contracts.subjects import ROOM, command_subject
from services.localsystem import LocalSystem, ServiceProcess
from services.runtime.eventstore import ObjectEventStore
from services.runtime.leases import partition_owners
from tests.e2e.chat_clients import ChatClient, joined
from tests.support import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(tmp_path) -> Iterator[LocalSystem]:
    """A fresh system with two room replicas (each test kills or pauses some)."""
    system = LocalSystem(tmp_path / "system", room_replicas=2)
    try:
        system.start()
        yield system
    finally:
        for room in system.rooms:  # a paused replica must be resumed to be stopped
            if room.alive():
                os.kill(room.pid, signal.SIGCONT)
        system.stop()


async def partition_of(nc: nats.NATS, room: str) -> int:
    """The partition the server maps `room` to: watch a request go by."""
    sub = await nc.subscribe(f"cmd.{ROOM}.*.{subject_token(room)}")
    await nc.request(command_subject(ROOM, room), GetRoom().model_dump_json().encode(), timeout=15)
    msg = await sub.next_msg(timeout=5)
    await sub.unsubscribe()
    return int(msg.subject.split(".")[2])


def replica_process(system: LocalSystem, replica_id: str) -> ServiceProcess:
    """The room process behind a replica id (which carries the process id)."""
    (process,) = [r for r in system.rooms if f"-{r.pid}-" in replica_id]
    return process


async def wait_spread(nc: nats.NATS, replicas: int, timeout: float = 20) -> collections.Counter:
    """Wait until all 16 partitions are leased, evenly, by exactly `replicas` replicas."""
    counts: collections.Counter = collections.Counter()

    async def spread() -> collections.Counter | None:
        nonlocal counts
        counts = collections.Counter((await partition_owners(nc, ROOM)).values())
        if sum(counts.values()) == 16 and len(counts) == replicas:
            if max(counts.values()) - min(counts.values()) <= 1:
                return counts
        return None

    return await eventually(spread, timeout, lambda: f"an even spread, stuck at {counts}")


async def stored_messages(nc: nats.NATS, room: str) -> list[str]:
    store = ObjectEventStore(nc, ROOM)
    return [
        event.text
        for commit in await store.read(room)
        for event in commit.events
        if type(event).__name__ == "MessagePosted"
    ]


class Chatter:
    """Several clients in one room, each saying numbered messages one after another."""

    def __init__(self, clients: list[ChatClient]) -> None:
        self.clients = clients
        self.acknowledged: dict[int, list[str]] = collections.defaultdict(list)
        self.errors: list[dict] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    @classmethod
    async def join(cls, system: LocalSystem, room: str, count: int) -> Chatter:
        clients = await joined(system, room, *(f"c{i}" for i in range(count)))
        # Everyone has seen everyone join before the first message.
        for client in clients:
            while sum(1 for f in client.frames if "joined" in f) < count:
                await client.recv()
        return cls(clients)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._talk(i, c)) for i, c in enumerate(self.clients)]

    async def _talk(self, index: int, client: ChatClient) -> None:
        n = 0
        while not self._stop.is_set():
            text = f"c{index}-{n}"
            answer = await client.say(text)
            if "error" in answer:
                self.errors.append(answer)
            else:
                self.acknowledged[index].append(text)
            n += 1

    def total(self) -> int:
        return sum(len(v) for v in self.acknowledged.values())

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def check(self, nc: nats.NATS, room: str) -> list[str]:
        """Every acknowledged message is stored exactly once, in each sender's order, and
        every client saw the room's messages with no gap and no repeat."""
        stored = await stored_messages(nc, room)
        assert not self.errors
        assert len(stored) == len(set(stored)), "a message was stored twice"
        for index, texts in self.acknowledged.items():
            mine = [t for t in stored if t.startswith(f"c{index}-")]
            assert mine[: len(texts)] == texts
        for client in self.clients:
            while len(client.messages()) < len(stored):
                await client.recv(timeout=10)
            assert client.messages() == stored
        return stored


async def test_kill_9_of_the_owner_loses_no_acknowledged_message(cluster):
    room = f"failover-{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(cluster.nats.url)
    await wait_spread(nc, 2)
    chatter = await Chatter.join(cluster, room, count=3)
    partition = await partition_of(nc, room)
    chatter.start()

    # Traffic flows; then the replica owning the room's partition is killed outright.
    await eventually(lambda: chatter.total() >= 30, timeout=15, what="30 messages")
    owner = (await partition_owners(nc, ROOM))[partition]
    replica_process(cluster, owner).kill()
    killed_at = chatter.total()

    # The other replica takes the partition within the lease TTL and traffic goes on.
    await eventually(lambda: chatter.total() >= killed_at + 30, timeout=20, what="30 more")
    await chatter.stop()
    survivor = (await partition_owners(nc, ROOM))[partition]
    assert survivor != owner

    stored = await chatter.check(nc, room)
    assert len(stored) >= killed_at + 30
    for client in chatter.clients:
        await client.close()
    await nc.close()


async def test_a_paused_owner_cannot_write_after_its_lease_lapsed(cluster):
    room = f"stale-{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(cluster.nats.url)
    await wait_spread(nc, 2)
    (alice,) = await joined(cluster, room, "alice")
    assert (await alice.say("before"))["message"] == "before"
    partition = await partition_of(nc, room)
    owner = (await partition_owners(nc, ROOM))[partition]
    paused = replica_process(cluster, owner)

    # Pause the owner, and hand it a post it cannot act on while paused.
    os.kill(paused.pid, signal.SIGSTOP)
    await alice.send({"message": "sent to a paused owner"})

    # Another replica takes the partition once the lease expires; the post is retried there.
    async def moved() -> bool:
        return (await partition_owners(nc, ROOM)).get(partition) not in (None, owner)

    await eventually(moved, 15, "the partition to move")
    await alice.recv_until(lambda f: f.get("message") == "sent to a paused owner", timeout=15)
    assert (await alice.say("after takeover"))["message"] == "after takeover"

    # Resume the ex-owner: the command it still holds is refused, not written, and it steps down.
    os.kill(paused.pid, signal.SIGCONT)
    await eventually(
        lambda: "stepping down" in paused.log_path.read_text(), timeout=10, what="step down"
    )
    assert (await alice.say("later"))["message"] == "later"
    assert await stored_messages(nc, room) == [
        "before", "sent to a paused owner", "after takeover", "later"
    ]
    await alice.close()
    await nc.close()


async def test_scaling_1_to_3_and_back_moves_partitions_and_loses_nothing(tmp_path):
    system = LocalSystem(tmp_path / "system", room_replicas=1).start()
    try:
        nc = await nats.connect(system.nats.url)
        room = f"scale-{uuid.uuid4().hex[:8]}"
        chatter = await Chatter.join(system, room, count=2)
        chatter.start()

        # One replica owns all 16 partitions; two more join while traffic runs.
        assert list((await wait_spread(nc, 1)).values()) == [16]
        system.start_room()
        system.start_room()
        assert sorted((await wait_spread(nc, 3)).values()) == [5, 5, 6]
        before = chatter.total()
        await eventually(lambda: chatter.total() >= before + 20, timeout=15, what="traffic on 3")

        # Two leave cleanly (SIGTERM): their partitions move at once to the one left.
        for room_process in system.rooms[1:]:
            assert room_process.stop() == 0
        assert list((await wait_spread(nc, 1)).values()) == [16]
        before = chatter.total()
        await eventually(lambda: chatter.total() >= before + 20, timeout=15, what="traffic on 1")

        await chatter.stop()
        await chatter.check(nc, room)
        for client in chatter.clients:
            await client.close()
        await nc.close()
    finally:
        system.stop()
