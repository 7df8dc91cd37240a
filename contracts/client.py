"""Sending commands to objects, with the retries the runtime's guarantees assume.

Each kind's contract module declares its typed client (`RoomClient`, `ContextClient`, ...)
as a subclass naming the kind and its reply union; callers use those, never raw requests.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar, Generic, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from pydantic import TypeAdapter, ValidationError

from contracts.common import Command, ErrorCode, ErrorReply
from contracts.subjects import command_subject

log = logging.getLogger(__name__)

R = TypeVar("R")
_tracer = trace.get_tracer("durachat")
# In a context, the span whose sends need no `send` span of their own (it is their sender).
SENDS_ITSELF = otel_context.create_key("durachat.sends-itself")


def tracing() -> bool:
    """Whether a tracer provider is installed (services/runtime/tracing.py sets one up)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def unavailable(kind: str) -> ErrorReply:
    return ErrorReply(code=ErrorCode.UNAVAILABLE, message=f"The {kind} is unavailable; try again.")


class ObjectClient(Generic[R]):
    """Sends commands to the objects of one kind.

    A command that times out, finds no owner (a service restarting, a partition moving) or
    is refused as retryable (busy, conflict) is sent again with the same command id until
    the deadline; the object applies it once. A subclass sets `kind` and `replies`.
    """

    kind: ClassVar[str]
    replies: ClassVar[TypeAdapter]

    def __init__(self, nc: NATS, timeout: float, attempt_timeout: float = 2.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self.attempt_timeout = min(attempt_timeout, timeout)
        self.unavailable = unavailable(self.kind)

    async def send(self, key: str, command: Command, timeout: float | None = None) -> R | ErrorReply:
        """The object's reply to `command`, retried until `timeout` (the client's default)."""
        if not tracing():
            return await self._send(key, command, timeout)
        current = trace.get_current_span()
        if otel_context.get_value(SENDS_ITSELF) is current:
            # A span that stands for its commands (the gateway's `receive ws.frame`): no
            # `send` span of its own; the command's name (and a refusal) go on that span.
            current.set_attribute("durachat.command", type(command).__name__)
            reply = await self._send(key, command, timeout)
            if isinstance(reply, ErrorReply):
                current.set_attribute("durachat.error", str(reply.code))
            return reply
        with _tracer.start_as_current_span(
            f"send cmd.{self.kind}.{{key}}", kind=trace.SpanKind.PRODUCER,
            attributes={"messaging.system": "nats", "messaging.destination.template":
                        f"cmd.{self.kind}.{{key}}", "durachat.command": type(command).__name__},
        ) as span:
            reply = await self._send(key, command, timeout)
            if isinstance(reply, ErrorReply):
                span.set_attribute("durachat.error", str(reply.code))
            return reply

    async def _send(self, key: str, command: Command, timeout: float | None) -> R | ErrorReply:
        subject = command_subject(self.kind, key)
        data = command.model_dump_json().encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        backoff = 0.02
        reply: R | ErrorReply = self.unavailable
        while True:
            remaining = deadline - loop.time()
            reply = await self._attempt(key, subject, data, min(self.attempt_timeout, remaining))
            if not (isinstance(reply, ErrorReply) and reply.retryable):
                return reply
            if loop.time() + backoff >= deadline:
                return reply
            if tracing():  # a retry is an event of the one send span, not a new span
                trace.get_current_span().add_event("retry", {"error": str(reply.code)})
            await asyncio.sleep(backoff)  # back off before sending the same command id again
            backoff = min(backoff * 2, 0.5)

    async def send_once(self, key: str, command: Command, timeout: float) -> R | ErrorReply:
        """One attempt, no retry: for callers with a fallback of their own (the limiter)."""
        data = command.model_dump_json().encode()
        return await self._attempt(key, command_subject(self.kind, key), data, timeout)

    async def _attempt(self, key: str, subject: str, data: bytes, timeout: float) -> R | ErrorReply:
        headers: dict[str, str] | None = None
        if tracing():
            headers = {}
            propagate.inject(headers)
        try:
            msg = await self.nc.request(subject, data, timeout=max(0.001, timeout), headers=headers)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return self.unavailable
        try:
            return self.replies.validate_json(msg.data)
        except ValidationError:
            log.error("%s %s replied outside the contract: %r", self.kind, key, msg.data[:200])
            return ErrorReply(
                code=ErrorCode.INTERNAL, message=f"The {self.kind} replied outside its contract."
            )


def client_for(kind: str, replies: TypeAdapter) -> type[ObjectClient]:
    """A client class for a kind declared at run time (tests); a service's kinds each have
    a class of their own in their contract module."""
    return type(f"{kind.title()}Client", (ObjectClient,), {"kind": kind, "replies": replies})
