"""The AI path's objects on a real nats-server, in this process: room, context and quota
hosts, the room's alarms, and the real google-genai client against the local Gemini fake.
What only these can show: quotas refuse before the provider is called, a question nobody
takes is closed by the room's deadline, the window is trimmed to its token budget with the
provider's counter, and a context service that stops fails its replies with their text kept."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack, asynccontextmanager

import nats
import pytest

from contracts.context import CONTEXT
from contracts.room import INCOMPLETE_MARK, JoinRoom, PostMessage, room_reply, room_update
from contracts.subjects import ROOM, command_subject, out_subject
from services.context.main import SERVICE as CONTEXT_SERVICE
from services.ratelimit.main import SERVICE as RATELIMIT_SERVICE
from services.room.main import SERVICE as ROOM_SERVICE
from tests.conftest import hosted
from tests.fakes.gemini import FakeGemini, Held, Reply, count_tokens
from tests.support import eventually

pytestmark = pytest.mark.nats


class Watcher:
    """A room member over NATS, recording the room's broadcasts."""

    def __init__(self, nc: nats.NATS, room: str) -> None:
        self.nc = nc
        self.room = room
        self.updates: list = []

    async def start(self) -> Watcher:
        async def on_update(msg):
            self.updates.append(room_update.validate_json(msg.data))

        await self.nc.subscribe(out_subject(ROOM, self.room), cb=on_update)
        await self.nc.flush()
        await self.send(JoinRoom(session_id="s1", name="alice"))
        return self

    async def send(self, command):
        msg = await self.nc.request(
            command_subject(ROOM, self.room), command.model_dump_json().encode(), timeout=5
        )
        return room_reply.validate_json(msg.data)

    async def say(self, text: str, user_id: str = "alice"):
        return await self.send(PostMessage(session_id="s1", text=text, user_id=user_id))

    def of(self, kind: str) -> list:
        return [u for u in self.updates if u.type == kind]

    def notices(self) -> list[str]:
        return [u.message.message for u in self.of("message") if u.message.kind == "system"]


@asynccontextmanager
async def ai_stack(
    nats_server, gemini: FakeGemini, *, context=True, daily_requests=100, budget=8000,
    start_timeout=30.0,
):
    """The room, ratelimit (and context) services in this process, each by its own
    bootstrap (the room's alarms included); yields a connection and the context's streamer."""
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(
            hosted(nats_server, ROOM_SERVICE, ai_start_timeout=start_timeout)
        )
        await stack.enter_async_context(
            hosted(nats_server, RATELIMIT_SERVICE, quota_daily_requests=daily_requests)
        )
        streamer = None
        if context:
            running = await stack.enter_async_context(
                hosted(
                    nats_server, CONTEXT_SERVICE, gemini_api_key="test-key",
                    gemini_base_url=gemini.base_url, ai_token_budget=budget, request_timeout=5,
                )
            )
            streamer = running.host(CONTEXT).deps.replies
        nc = await nats.connect(nats_server.url)
        stack.push_async_callback(nc.drain)
        yield nc, streamer


def new_room() -> str:
    return f"ai-{uuid.uuid4().hex[:10]}"


async def test_a_question_over_quota_is_refused_before_the_provider_is_called(nats_server, gemini):
    async with ai_stack(nats_server, gemini, daily_requests=1) as (nc, _):
        room = await Watcher(nc, new_room()).start()
        user = f"u-{uuid.uuid4().hex[:8]}"
        calls = len([r for r in gemini.requests if r.kind == "stream"])
        gemini.script(Reply(["allowed"]))
        await room.say("@ai first", user_id=user)
        await eventually(lambda: any(u.message.kind == "ai" for u in room.of("message")), 10)
        await room.say("@ai second", user_id=user)
        await eventually(lambda: room.of("ai_failed"), 10, "the refusal")
        assert room.of("ai_failed")[0].reason == "quota"
        assert "quota" in room.notices()[0].lower()
        assert len([r for r in gemini.requests if r.kind == "stream"]) == calls + 1


async def test_a_question_nobody_takes_is_closed_by_the_rooms_deadline(nats_server, gemini):
    async with ai_stack(nats_server, gemini, context=False, start_timeout=1.0) as (nc, _):
        room = await Watcher(nc, new_room()).start()
        await room.say("@ai anyone there?")
        # The alarm's granularity is 1 s and a due alarm may be redelivered: allow some.
        await eventually(lambda: room.of("ai_failed"), 15, "the deadline")
        assert room.of("ai_failed")[0].reason == "timeout"
        assert "did not start" in room.notices()[0]
        assert room.of("ai_failed")[0].message is None  # nothing was streamed


async def test_the_window_is_trimmed_to_the_token_budget_with_the_providers_counter(
    nats_server, gemini
):
    budget = 300
    async with ai_stack(nats_server, gemini, budget=budget) as (nc, _):
        room = await Watcher(nc, new_room()).start()
        for i in range(25):
            await room.say(f"message number {i:02d} with some padding to take up tokens")
        asked = len(gemini.requests)
        gemini.script(Reply(["ok"]))
        await room.say("@ai summarise please")
        await eventually(lambda: any(u.message.kind == "ai" for u in room.of("message")), 10)
        requests = gemini.requests[asked:]
        counts = [r for r in requests if r.kind == "count"]
        (stream,) = [r for r in requests if r.kind == "stream"]
        assert len(counts) >= 2  # over budget at first, then trimmed and counted again
        assert count_tokens(stream.json) <= budget
        last_turn = stream.turns[-1][1]
        assert last_turn.endswith("alice asks: summarise please")
        assert "message number 24" in last_turn and "message number 00" not in last_turn


async def test_a_stopping_context_service_fails_its_replies_with_the_text_kept(nats_server, gemini):
    async with ai_stack(nats_server, gemini) as (nc, streamer):
        room = await Watcher(nc, new_room()).start()
        gemini.script(Held(["kept ", "lost"]))
        await room.say("@ai go")
        gemini.release(1)
        await eventually(lambda: room.of("ai_chunk"), 10, "the first chunk")
        await streamer.stop()
        await eventually(lambda: room.of("ai_failed"), 10, "the failure")
        failed = room.of("ai_failed")[0]
        assert failed.reason == "unavailable"
        assert failed.message.message == "kept " + INCOMPLETE_MARK
        assert "restarted" in room.notices()[0]
        gemini.release(1)  # let the fake finish the held step


def ai_questions(state: str) -> float:
    """`durachat_ai_questions{state}` of this process, summed over its replica labels."""
    from prometheus_client import REGISTRY

    return sum(s.value for family in REGISTRY.collect() if family.name == "durachat_ai_questions"
               for s in family.samples if s.labels.get("state") == state)


async def test_ai_questions_gauge_counts_waiting_then_streaming(nats_server, gemini):
    """Questions a context replica holds, by state: `waiting` until the room took the reply's
    start (here: the quota service is down, so the question waits for it, then fails),
    `streaming` while the provider's text goes into the room, and none once it ended."""
    waiting, streaming = ai_questions("waiting"), ai_questions("streaming")
    async with AsyncExitStack() as stack:  # room and context, no ratelimit (quota) service
        await stack.enter_async_context(hosted(nats_server, ROOM_SERVICE))
        await stack.enter_async_context(hosted(
            nats_server, CONTEXT_SERVICE, gemini_api_key="test-key",
            gemini_base_url=gemini.base_url, request_timeout=5))
        nc = await nats.connect(nats_server.url)
        stack.push_async_callback(nc.drain)
        room = await Watcher(nc, new_room()).start()
        await room.say("@ai is anyone counting?")
        await eventually(lambda: ai_questions("waiting") == waiting + 1, 5, "the question waits")
        assert ai_questions("streaming") == streaming
        await eventually(lambda: room.of("ai_failed"), 15, "the quota's refusal")
        await eventually(lambda: ai_questions("waiting") == waiting, 5, "no longer waiting")

    async with ai_stack(nats_server, gemini) as (nc, _):
        room = await Watcher(nc, new_room()).start()
        gemini.script(Held(["held ", "then done"]))
        await room.say("@ai stream slowly")
        gemini.release(1)
        await eventually(lambda: room.of("ai_chunk"), 10, "the first chunk")
        assert (ai_questions("waiting"), ai_questions("streaming")) == (waiting, streaming + 1)
        gemini.release(1)
        await eventually(lambda: any(u.message.kind == "ai" for u in room.of("message")), 10)
        await eventually(lambda: ai_questions("streaming") == streaming, 5, "the reply ended")
