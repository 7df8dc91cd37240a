"""The live view is answered outside the objects' mailboxes: a replica reports an object's
queued commands and its state while the object is stuck in a batch (its reaction waits), and
the answers change nothing."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from pydantic import TypeAdapter

from contracts.client import client_for
from contracts.subjects import command_subject
from services.runtime.admin import gather
from services.runtime.kind import Committed, ObjectContext
from services.runtime.service import Hosting, ObjectService, ObjectServiceSettings, ServiceParts
from tests.conftest import hosted
from tests.integration.test_object_kinds import Add, Counter, CounterReply, counter_kind
from tests.support import eventually

pytestmark = pytest.mark.nats


async def test_objects_and_inspect_answer_while_the_mailbox_is_stuck(nats_server, nc):
    kind = f"adm{uuid.uuid4().hex[:8]}"
    release = asyncio.Event()
    counter = counter_kind(kind, [])

    @counter.after_commit
    async def wait(committed: Committed, state: Counter | None, ctx: ObjectContext) -> None:
        await release.wait()  # the mailbox's task waits here: no later batch runs meanwhile

    async def build(nc_, settings, clock) -> ServiceParts:
        return ServiceParts([Hosting(counter, [])])

    client = client_for(kind, TypeAdapter(CounterReply))(nc, timeout=10)
    async with hosted(nats_server, ObjectService(kind, ObjectServiceSettings, build)) as running:
        try:
            first = asyncio.create_task(client.send("c1", Add(by=2)))
            await eventually(lambda: first.done(), 5, "the first command answered (its reaction waits)")
            # Two more commands queue behind the stuck reaction.
            for by in (3, 4):
                await nc.publish(command_subject(kind, "c1"), Add(by=by).model_dump_json().encode(),
                                 reply=nc.new_inbox())
            await nc.flush()
            host = running.host(kind)
            await eventually(lambda: host._mailboxes["c1"].queue.qsize() == 2, 5, "two queued")

            (answer,) = await gather(nc, kind, {"op": "objects"}, expect=1)
            (listed,) = answer["objects"]
            assert listed["key"] == "c1" and listed["mailbox"] == 2 and listed["version"] == 1
            assert answer["replica"] == running.replica_id
            (view,) = await gather(nc, kind, {"op": "inspect", "key": "c1"}, expect=1)
            assert view["resident"] and view["mailbox"] == 2 and view["state"]["value"] == 2
            (absent,) = await gather(nc, kind, {"op": "inspect", "key": "nobody"}, expect=1)
            assert absent["resident"] is False
            (bad,) = await gather(nc, kind, {"op": "nonsense"}, expect=1)
            assert "unknown request" in bad["error"]
            raw = await nc.request(f"durachat.admin.{kind}", b"not json", timeout=2)
            assert "bad request" in json.loads(raw.data)["error"]

        finally:
            release.set()  # else the host's stop waits on the stuck mailbox forever
        await eventually(lambda: host._mailboxes["c1"].queue.qsize() == 0, 5, "drained")
        (view,) = await gather(nc, kind, {"op": "inspect", "key": "c1"}, expect=1)
        assert view["state"]["value"] == 9 and view["version"] == 2  # the two queued: one group commit
