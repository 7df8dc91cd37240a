"""An object kind is a declaration: a counter kind written here in a page (the example in
docs/ARCHITECTURE.md), hosted by the runtime on a real nats-server. A handler that raises is
answered `internal` and tried once; a domain error is answered with its code and stores
nothing; a declaration that leaves a command unhandled is refused."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Literal

import pytest
from eventsourcing.domain import Aggregate, event
from pydantic import Field, TypeAdapter

from contracts.client import ObjectClient, client_for
from contracts.common import Command, Contract, ErrorCode, ErrorReply
from contracts.subjects import command_subject
from services.runtime.eventstore import ObjectEventStore
from services.runtime.kind import ObjectContext, ObjectKind, Outcome
from services.runtime.service import Hosting, ObjectService, ObjectServiceSettings, ServiceParts
from tests.conftest import hosted

pytestmark = pytest.mark.nats


# --- the kind: contracts, aggregate, handlers ------------------------------------------------


class Add(Command):
    type: Literal["add"] = "add"
    by: int = Field(ge=1)


class Crash(Command):
    """A command whose handler has a bug."""

    type: Literal["crash"] = "crash"


class Counted(Contract):
    type: Literal["counted"] = "counted"
    value: int


CounterCommand = Annotated[Add | Crash, Field(discriminator="type")]
CounterReply = Annotated[Counted | ErrorReply, Field(discriminator="type")]


class TooBig(Exception):
    """The counter would pass its limit."""


class Counter(Aggregate):
    @event("Created")
    def __init__(self) -> None:
        self.value = 0

    def add(self, by: int) -> None:
        if self.value + by > 100:
            raise TooBig(f"{self.value} + {by} is past 100.")
        self._added(by=by)

    @event("Added")
    def _added(self, by: int) -> None:
        self.value += by


def counter_kind(name: str, calls: list[str]) -> ObjectKind[Counter, list[str]]:
    counter = ObjectKind[Counter, list[str]](name, CounterCommand, errors={TooBig: ErrorCode.TOO_LONG})

    @counter.handles(Add)
    def add(command: Add, state: Counter | None, ctx: ObjectContext[list[str]]) -> Outcome:
        state = state or Counter()
        state.add(command.by)
        return Outcome(state, Counted(value=state.value))

    @counter.handles(Crash)
    def crash(command: Crash, state: Counter | None, ctx: ObjectContext[list[str]]) -> Outcome:
        ctx.deps.append(ctx.key)
        state = state or Counter()
        state.add(1)  # changed half-way, then the bug: the host must not store this
        raise ZeroDivisionError("a bug in the handler")

    return counter


def counter_service(name: str, calls: list[str]) -> ObjectService:
    async def build(nc, settings, clock) -> ServiceParts:
        return ServiceParts([Hosting(counter_kind(name, calls), calls)])

    return ObjectService(name, ObjectServiceSettings, build)


def client_of(kind: str) -> type[ObjectClient]:
    return client_for(kind, TypeAdapter(CounterReply))


@pytest.fixture
def kind() -> str:
    return f"counter{uuid.uuid4().hex[:8]}"


# --- the stories ---------------------------------------------------------------------------------


async def test_a_crashing_command_is_answered_internal_and_tried_once(nats_server, nc, kind, caplog):
    calls: list[str] = []
    counters = client_of(kind)(nc, timeout=3)
    async with hosted(nats_server, counter_service(kind, calls)):
        assert await counters.send("c1", Add(by=2)) == Counted(value=2)
        # The client retries what is retryable until its timeout; `internal` is not.
        with caplog.at_level(logging.ERROR, logger="services.runtime.host"):
            reply = await counters.send("c1", Crash())
        assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.INTERNAL
        assert not reply.retryable
        assert calls == ["c1"]
        assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1
        # The half-made change was dropped and the object rebuilt from its stream.
        assert await counters.send("c1", Add(by=1)) == Counted(value=3)
    commits = await ObjectEventStore(nc, kind).read("c1")
    assert [type(e).__name__ for c in commits for e in c.events] == ["Created", "Added", "Added"]


async def test_a_domain_error_is_answered_with_its_code_and_stores_nothing(nats_server, nc, kind):
    counters = client_of(kind)(nc, timeout=3)
    async with hosted(nats_server, counter_service(kind, [])):
        assert await counters.send("c2", Add(by=100)) == Counted(value=100)
        refused = await counters.send("c2", Add(by=1))
        assert isinstance(refused, ErrorReply) and refused.code == ErrorCode.TOO_LONG
        assert refused.message == "100 + 1 is past 100."
        msg = await nc.request(command_subject(kind, "c2"), b'{"type": "add", "by": 0}', timeout=3)
        bad = counters.replies.validate_json(msg.data)
        assert isinstance(bad, ErrorReply) and bad.code == ErrorCode.BAD_REQUEST
        assert "by" in bad.message and kind in bad.message
    commits = await ObjectEventStore(nc, kind).read("c2")
    assert [type(e).__name__ for c in commits for e in c.events] == ["Created", "Added"]


def test_a_declaration_with_an_unhandled_command_is_refused():
    counter = ObjectKind[Counter, None]("counter", CounterCommand)

    @counter.handles(Add)
    def add(command, state, ctx) -> Outcome:
        raise AssertionError("not called")

    with pytest.raises(TypeError, match="no handler for Crash"):
        counter.check()
