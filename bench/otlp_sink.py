"""An in-process OTLP/HTTP trace collector: accepts `POST /v1/traces` (protobuf), keeps the
spans. Tests read them; benchmarks count them (the traces' cost includes real export)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass
class SpanRecord:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    links: list[tuple[str, str]] = field(default_factory=list)  # (trace id, span id)
    attributes: dict[str, object] = field(default_factory=dict)


def _value(v) -> object:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


class OtlpSink:
    """`with OtlpSink() as sink:` serves on 127.0.0.1:<free port>; `sink.endpoint` is what
    OTEL_EXPORTER_OTLP_ENDPOINT should say."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.spans: list[SpanRecord] = []
        self.count = 0
        self.names: Counter[tuple[str, str]] = Counter()  # (service, span name) -> spans
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.take(body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        got: list[SpanRecord] = []
        for resource in request.resource_spans:
            attrs = {a.key: _value(a.value) for a in resource.resource.attributes}
            service = str(attrs.get("service.name", "?"))
            for scope in resource.scope_spans:
                for s in scope.spans:
                    got.append(SpanRecord(
                        service, s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                        s.kind, [(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                        {a.key: _value(a.value) for a in s.attributes},
                    ))
        with self.lock:
            self.count += len(got)
            self.names.update((s.service, s.name) for s in got)
            if self.keep:
                self.spans.extend(got)

    def snapshot(self) -> list[SpanRecord]:
        with self.lock:
            return list(self.spans)

    def __enter__(self) -> OtlpSink:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
