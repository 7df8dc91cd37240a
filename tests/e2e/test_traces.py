"""One trace per chat message across real processes: the gateway's frame span, the room
client's send, the owner's process span, the commit (linked to its commands, its context in
the stored commit's headers), each gateway's fan-out, and the projector linked to the commit.
Spans are exported over OTLP/HTTP by each process to a collector in this test."""

from __future__ import annotations

import pytest

from bench.otlp_sink import OtlpSink, SpanRecord
from services.localsystem import LocalSystem
from tests.conftest import PARTITIONS, running
from tests.e2e.chat_clients import joined
from tests.support import eventually

pytestmark = pytest.mark.e2e


def by_id(spans: list[SpanRecord]) -> dict[str, SpanRecord]:
    return {s.span_id: s for s in spans}


def ancestors(span: SpanRecord, index: dict[str, SpanRecord]) -> list[SpanRecord]:
    chain = []
    while span.parent_id and span.parent_id in index:
        span = index[span.parent_id]
        chain.append(span)
    return chain


async def test_a_chat_message_is_one_trace_across_the_processes(tmp_path):
    with OtlpSink() as sink:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        with running(LocalSystem(tmp_path, partitions=PARTITIONS, extra_env=env)) as system:
            alice, bob = await joined(system, "traced", "alice", "bob")
            await alice.say("trace me")
            await bob.recv_until(lambda f: f.get("message") == "trace me")

            def post_trace() -> list[SpanRecord] | None:
                spans = sink.snapshot()
                sends = [s for s in spans if s.name == "receive ws.frame"
                         and s.attributes.get("durachat.command") == "PostMessages"]
                if not sends:
                    return None
                trace = [s for s in spans if s.trace_id == sends[0].trace_id]
                names = {s.name for s in trace}
                wanted = {"receive ws.frame", "process cmd.room.{key}",
                          "durachat.commit room", "process out.room.{key}"}
                return trace if wanted <= names else None

            await eventually(post_trace, 20, lambda: f"spans so far: {[s.name for s in sink.snapshot()]}")
            trace = post_trace()
            assert trace is not None
            index = by_id(trace)
            (frame,) = [s for s in trace if s.name == "receive ws.frame"]
            assert frame.service == "durachat-gateway" and frame.parent_id == ""
            assert frame.attributes["durachat.room"] == "traced"
            (process,) = [s for s in trace if s.name == "process cmd.room.{key}"]
            assert process.service == "durachat-room"
            # The frame's span sends the command itself: no `send` span between them.
            assert [a.name for a in ancestors(process, index)] == ["receive ws.frame"]
            assert not [s for s in trace if s.name == "send cmd.room.{key}"]
            assert process.attributes["durachat.outcome"] == "ok"
            (commit,) = [s for s in trace if s.name == "durachat.commit room"]
            assert (process.trace_id, process.span_id) in commit.links
            fanouts = [s for s in trace if s.name == "process out.room.{key}"]
            assert fanouts and all(f.parent_id == process.span_id for f in fanouts)
            assert any(f.attributes.get("durachat.sockets") == 2 for f in fanouts)

            # The projector's batch links to the stored commit (its context was in the headers).
            def projected() -> bool:
                return any((commit.trace_id, commit.span_id) in s.links
                           for s in sink.snapshot() if s.name == "durachat.project EVT_ROOM")
            await eventually(projected, 20, "the projector links to the commit")

            # An AI reply is one trace from the question to its last chunk.
            await alice.send({"message": "@ai what is a trace?"})
            await bob.recv_until(lambda f: f.get("name") == "AI" and "message" in f, timeout=30)

            def ai_trace() -> set[str] | None:
                spans = sink.snapshot()
                asks = [s for s in spans if s.name == "send cmd.context.{key}"]
                for ask in asks:
                    trace = [s for s in spans if s.trace_id == ask.trace_id]
                    commands = {s.attributes.get("durachat.command") for s in trace}
                    if {"PostMessages", "Ask", "StartAiReply", "AppendAiReply", "CompleteAiReply"} <= commands \
                            and any(s.name.startswith("chat ") for s in trace):
                        return {s.service for s in trace}
                return None
            await eventually(ai_trace, 30, lambda: f"{sorted({s.name for s in sink.snapshot()})}")
            assert {"durachat-gateway", "durachat-room", "durachat-context"} <= (ai_trace() or set())
            for client in (alice, bob):
                await client.close()


async def test_limiter_charges_are_not_children_of_the_socket(tmp_path):
    """A socket lives for hours: its frames' limiter charges must not all hang under its
    connection span (one trace per socket, thousands of spans). Each charge is a trace of
    its own, so a sampler keeps or drops it on its own."""
    with OtlpSink() as sink:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
               "DURACHAT_RATE_LIMIT": "true"}  # the suite turns the limit off
        with running(LocalSystem(tmp_path, partitions=PARTITIONS, extra_env=env)) as system:
            (alice,) = await joined(system, "charged", "alice")
            for i in range(3):
                await alice.say(f"charge {i}")  # say() waits for the echo: each frame passes

            # Four charges (the name frame, three messages). Waiting for all four flaked: in 2 of
            # 14 runs one or two of them never reached the sink although the limiter answered
            # every charge (no local decision); which is lost is not ours to test here. Two
            # suffice to show that each is a root of its own trace.
            def charges() -> list[SpanRecord]:
                found = [s for s in sink.snapshot() if s.name == "process cmd.limiter.{key}"]
                return found if len(found) >= 2 else []
            found = await eventually(charges, 20, lambda: f"{[s.name for s in sink.snapshot()]}")
            assert all(s.parent_id == "" for s in found), [(s.name, s.parent_id) for s in found]
            assert len({s.trace_id for s in found}) == len(found)
            await alice.close()


async def test_no_endpoint_no_spans(system: LocalSystem):
    """Off by default: the processes of a system without OTEL_* export nothing (they run
    with the API's no-op provider; the room client puts no traceparent on commands)."""
    from nats.aio.client import Client

    nc = Client()
    await nc.connect(system.nats.url)
    try:
        seen: list[dict] = []

        async def record(msg) -> None:
            seen.append(dict(msg.headers or {}))

        await nc.subscribe("out.room.*", cb=record)
        alice, = await joined(system, "untraced", "alice")
        await alice.say("no trace")
        await eventually(lambda: len(seen) >= 1, 10, "a broadcast")
        assert all("traceparent" not in h for h in seen)
        await alice.close()
    finally:
        await nc.close()
