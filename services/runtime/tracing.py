"""Traces (OpenTelemetry): one trace per chat message, W3C `traceparent` in NATS headers.

Off, at no cost beyond a flag check, until an OTLP endpoint is configured
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTLP over HTTP/protobuf;
the other OTEL_* variables apply as usual). Then every process exports its spans:

    receive ws.frame                 gateway, per command answering a socket's frames (a join
                                     or a batch of posts), a root: not one trace per socket;
                                     it is the command's sender (`durachat.command`; retries
                                     are its events), with no `send` span of its own
      process cmd.room.{key}         the owner: receive -> reply through the output gate
        durachat.commit room         one per group commit, linked to every command in it;
                                     its context is stored in the commit's headers
      (out.room.{key} carries the command's context)
        process out.room.{key}       each gateway's fan-out (sockets, write time)
    durachat.project EVT_ROOM        the projector, per batch, linked to each stored commit
    process cmd.limiter.{key}        each frame's limiter charge: a trace of its own (the charge
                                     is off the frame's path; never a child of the socket)

Other callers' commands get a `send cmd.<kind>.{key}` span (PRODUCER) around the request.

An AI reply is one trace: the room's reaction asks the context service under the message's
span, whose reply task runs `chat {model}` and sends its appends as children of it.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanKind

from contracts.client import SENDS_ITSELF

log = logging.getLogger(__name__)

ENABLED = False  # set by setup(); every helper is a no-op (and nearly free) while False
tracer = trace.get_tracer("durachat")


def endpoint_configured() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup(service: str, replica: str | None = None, exporter: Any = None) -> bool:
    """Install a tracer provider exporting over OTLP when an endpoint is configured (or
    to `exporter`, for tests and benchmarks). True when tracing is on."""
    global ENABLED
    if exporter is None and not endpoint_configured():
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    attributes = {"service.name": os.environ.get("OTEL_SERVICE_NAME", f"durachat-{service}")}
    if replica:
        attributes["service.instance.id"] = replica
    provider = TracerProvider(resource=Resource.create(attributes))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    ENABLED = True
    log.info("tracing on: %s exports spans over OTLP", attributes["service.name"])
    return True


def shutdown() -> None:
    provider = trace.get_tracer_provider()
    if ENABLED and hasattr(provider, "shutdown"):
        provider.shutdown()


# --- propagation ---------------------------------------------------------------------------


def headers_of(span: Span | None = None) -> dict[str, str] | None:
    """`traceparent` (and `tracestate`) of `span` or the current span, or None when off."""
    if not ENABLED:
        return None
    carrier: dict[str, str] = {}
    ctx = trace.set_span_in_context(span) if span is not None else None
    propagate.inject(carrier, context=ctx)
    return carrier or None


def context_of(headers: Mapping[str, str] | None) -> otel_context.Context | None:
    return propagate.extract(dict(headers)) if headers else None


def link_of(headers: Mapping[str, str] | None) -> Link | None:
    """A link to the span whose context `headers` carry (e.g. a stored commit's)."""
    if not headers or "traceparent" not in headers:
        return None
    span_context = trace.get_current_span(context_of(headers)).get_span_context()
    return Link(span_context) if span_context.is_valid else None


def detached() -> contextvars.Context:
    """A copy of the current context without its span: a task created in it
    (`asyncio.create_task(..., context=detached())`) starts traces of its own instead of
    joining the current one (e.g. a socket's limiter charges, not children of the socket)."""
    ctx = contextvars.copy_context()
    if ENABLED:
        ctx.run(otel_context.attach, otel_context.Context())
    return ctx


# --- spans -----------------------------------------------------------------------------------


def start_consumer(name: str, headers: Mapping[str, str] | None, **attributes: Any) -> Span | None:
    """A span for a message received (parent: the sender's, from `headers`); ended by the
    caller (`end`). None when tracing is off."""
    if not ENABLED:
        return None
    return tracer.start_span(name, context=context_of(headers), kind=SpanKind.CONSUMER,
                             attributes={"messaging.system": "nats", **attributes})


def end(span: Span | None, **attributes: Any) -> None:
    if span is not None:
        if attributes:
            span.set_attributes(attributes)
        span.end()


@contextmanager
def using(span: Span | None) -> Iterator[None]:
    """Run the block with `span` as the current span (so what it sends carries it)."""
    if span is None:
        yield
        return
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def span(name: str, kind: SpanKind = SpanKind.INTERNAL, links: list[Link] | None = None,
         parent: Span | None = None, attributes: Mapping[str, Any] | None = None,
         ) -> Iterator[Span | None]:
    """A span around the block (current inside it), or nothing when tracing is off."""
    if not ENABLED:
        yield None
        return
    ctx = trace.set_span_in_context(parent) if parent is not None else None
    with tracer.start_as_current_span(name, context=ctx, kind=kind, links=links or None,
                                      attributes=dict(attributes or {})) as current:
        yield current


class ChatSpan:
    """`chat {model}` (GenAI semconv): current from its start, so the reply's appends to
    the room are its children; ended with the token usage."""

    __slots__ = ("_span", "_token")

    def __init__(self, model: str, provider: str) -> None:
        self._span: Span | None = None
        self._token: object | None = None
        if ENABLED:
            self._span = tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT, attributes={
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
                "gen_ai.request.model": model})
            self._token = otel_context.attach(trace.set_span_in_context(self._span))

    def end(self, input_tokens: int, output_tokens: int, failure: str | None) -> None:
        if self._span is None:
            return
        self._span.set_attributes({"gen_ai.usage.input_tokens": input_tokens,
                                   "gen_ai.usage.output_tokens": output_tokens})
        if failure:
            self._span.set_attribute("error.type", failure)
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
        self._span.end()
        self._span = self._token = None


@contextmanager
def frame_span(room: str) -> Iterator[Span | None]:
    """`receive ws.frame`: the client's frames answered by one command (a join, or a batch of
    posts), current inside the block. A root of its own trace (a socket lives for hours: one
    trace per socket would be useless), linked to the connection's span when there is one."""
    if not ENABLED:
        yield None
        return
    connection = trace.get_current_span().get_span_context()
    with tracer.start_as_current_span(
        "receive ws.frame", context=otel_context.Context(), kind=SpanKind.SERVER,
        links=[Link(connection)] if connection.is_valid else None,
        attributes={"durachat.room": room},
    ) as current:
        # It stands for the commands it sends (no `send` span each: contracts/client.py).
        token = otel_context.attach(otel_context.set_value(SENDS_ITSELF, current))
        try:
            yield current
        finally:
            otel_context.detach(token)
