"""Leases converge after any pause: a room replica frozen (SIGSTOP) past its lease, then
resumed, takes its share back, and every partition has a live owner that answers, within a
bound, round after round."""

from __future__ import annotations

import asyncio
import signal
import time

import nats

from contracts.common import ErrorReply
from contracts.room import GetRoom, RoomClient
from contracts.subjects import ROOM
from services.localsystem import LocalSystem
from services.runtime.leases import lease_coverage
from tests.conftest import running
from tests.support import eventually

LEASE_TTL = 1
ROUNDS = 4
BOUND = 6.0  # seconds after the resume: membership lapses, rejoins, hand-overs


async def test_a_paused_replica_always_takes_its_partitions_back(tmp_path):
    system = LocalSystem(tmp_path, partitions=16, room_replicas=2,
                         extra_env={"DURACHAT_LEASE_TTL": str(LEASE_TTL)})
    with running(system):
        nc = await nats.connect(system.nats.url)
        rooms = RoomClient(nc, timeout=1)
        names = [f"conv-{i}" for i in range(32)]  # spread over the partitions

        async def settled() -> bool:
            coverage = await lease_coverage(nc, ROOM)
            owners = set(coverage.owners.values())
            if len(coverage.owners) < 16 or len(owners) < 2:
                return False  # every partition owned, and by both replicas
            replies = await asyncio.gather(*(rooms.send_once(n, GetRoom(), 1) for n in names))
            return not any(isinstance(r, ErrorReply) for r in replies)

        await eventually(settled, 20, "both replicas serving")
        for round_ in range(ROUNDS):
            # Freeze one replica well past its lease, then let it go on.
            paused = system.rooms[round_ % 2].process
            paused.send_signal(signal.SIGSTOP)
            await asyncio.sleep(3 * LEASE_TTL)  # the pause itself is the test's input
            paused.send_signal(signal.SIGCONT)
            resumed = time.monotonic()
            await eventually(settled, BOUND, f"round {round_}: leases to converge")
            assert time.monotonic() - resumed <= BOUND
        await nc.close()
