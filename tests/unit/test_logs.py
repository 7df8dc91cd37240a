"""Log lines: JSON with service, replica, the object's kind and key, and the trace id; text
that a person reads on a terminal."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.runtime import logs


@pytest.fixture
def captured(monkeypatch):
    def capture(fmt: str) -> tuple[logging.Logger, io.StringIO]:
        monkeypatch.setenv("DURACHAT_LOG_FORMAT", fmt)
        logs.configure("room")
        logs.set_replica("vm-1-abcd")
        stream = io.StringIO()
        handler = logging.getLogger().handlers[0]
        handler.setStream(stream)  # type: ignore[attr-defined]
        return logging.getLogger("services.runtime.host"), stream

    yield capture
    logs.set_replica("")
    logging.basicConfig(force=True)


async def test_json_lines_name_the_process_the_object_and_the_trace(captured):
    log, stream = captured("json")
    log.info("plain")

    async def in_a_mailbox() -> None:
        logs.object_context("room", "lobby")
        tracer = TracerProvider().get_tracer("test")
        with tracer.start_as_current_span("process cmd.room.{key}") as span:
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("room/lobby failed")
            return span

    span = await asyncio.create_task(in_a_mailbox())
    log.warning("after")  # the mailbox task's object does not leak into this one
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["service"] == "room" and first["replica"] == "vm-1-abcd"
    assert first["msg"] == "plain" and first["level"] == "INFO" and "kind" not in first
    assert second["kind"] == "room" and second["key"] == "lobby"
    assert second["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert "ValueError: boom" in second["exc"]
    assert "kind" not in third and "trace_id" not in third


def test_text_for_people(captured):
    log, stream = captured("text")
    log.warning("stale copy, rebuilding")
    line = stream.getvalue().strip()
    assert "room[vm-1-abcd] services.runtime.host WARNING stale copy, rebuilding" in line
    with pytest.raises(ValueError):
        json.loads(line)
