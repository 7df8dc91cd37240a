"""Logs: JSON lines off a terminal, human-readable lines on one; stdlib `logging` stays the API.

Every record gets the process's `service` and `replica`, the object's `kind` and `key` when
it comes from an object's mailbox (or anything run under `object_context`), and the current
span's `trace_id`/`span_id` when tracing is on. DURACHAT_LOG_FORMAT=json|text overrides the
choice (default: text when stderr is a terminal, else JSON, as under `make run`, whose logs
are files).

    {"ts": "2026-12-01T11:20:00.123Z", "level": "WARNING", "service": "room",
     "replica": "vm-4242-1a2b", "logger": "services.runtime.host", "kind": "room",
     "key": "lobby", "trace_id": "4bf9…", "msg": "room/lobby: stale copy, rebuilding"}
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Any

from opentelemetry import trace

from services.runtime.settings import ObservabilitySettings

OBJECT: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "durachat_object", default=None
)
_process: dict[str, str] = {"service": "", "replica": ""}


def object_context(kind: str, key: str) -> None:
    """Name the object the current task works for (a mailbox's task sets it once)."""
    OBJECT.set((kind, key))


def set_replica(replica: str) -> None:
    _process["replica"] = replica


def replica() -> str:
    """This process's replica id (set when its service starts), or ''."""
    return _process["replica"]


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    obj = OBJECT.get()
    if obj is not None:
        fields["kind"], fields["key"] = obj
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = format(span.trace_id, "032x")
        fields["span_id"] = format(span.span_id, "016x")
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "service": _process["service"],
        }
        if _process["replica"]:
            line["replica"] = _process["replica"]
        line["logger"] = record.name
        line.update(_fields(record))
        line["msg"] = record.getMessage()
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time service[replica] logger LEVEL message  (kind/key trace=…)`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(who)s %(name)s %(levelname)s %(message)s%(where)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        who = _process["service"] + (f"[{_process['replica']}]" if _process["replica"] else "")
        where = []
        if "kind" in fields:
            where.append(f"{fields['kind']}/{fields['key']}")
        if "trace_id" in fields:
            where.append(f"trace={fields['trace_id']}")
        record.who = who
        record.where = f"  ({' '.join(where)})" if where else ""
        return super().format(record)


def log_format() -> str:
    chosen = ObservabilitySettings().log_format
    if chosen != "auto":
        return chosen
    return "text" if sys.stderr.isatty() else "json"


def configure(service: str, level: int = logging.INFO) -> None:
    """Log `service`'s records to stderr, as JSON lines or text (see the module's docstring)."""
    _process["service"] = service
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format() == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
