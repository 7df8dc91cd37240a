"""Prometheus metrics of every durachat process (prometheus-client, the default registry).

Names follow Prometheus conventions (`durachat_` prefix, seconds, `_total` counters). Labels
stay bounded: kind, replica, outcome, reason, source, code, model, direction; never a room,
user or key (per-object detail is `durachat-replay inspect`).

Each process serves them: the gateway at `/metrics` on its own port, every other process on
DURACHAT_METRICS_PORT (0 or unset: a free port; `off`: not served), logged at start and
given in its `$SRV.INFO` metadata (`metrics`), so `durachat-replay top` finds them.
"""

from __future__ import annotations

import logging
from typing import Any

import prometheus_client
from prometheus_client import start_http_server

from services.runtime.settings import ObservabilitySettings

log = logging.getLogger(__name__)


class _Off:
    """A metric that records nothing (DURACHAT_METRICS=off: the benchmark's baseline)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def labels(self, *values: object, **labels: object) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def set_function(self, f: object) -> None:
        pass


SETTINGS = ObservabilitySettings()
OFF = SETTINGS.metrics == "off"
Counter: Any = _Off if OFF else prometheus_client.Counter
Gauge: Any = _Off if OFF else prometheus_client.Gauge
Histogram: Any = _Off if OFF else prometheus_client.Histogram

FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

# --- the runtime (services/runtime) ----------------------------------------------------------
OBJECTS_RESIDENT = Gauge("durachat_objects_resident", "Objects in memory", ["kind"])
OBJECT_LOADS = Counter("durachat_object_loads_total", "Objects loaded into memory", ["kind", "source"])
OBJECT_LOAD_SECONDS = Histogram(
    "durachat_object_load_seconds", "Time to load an object (snapshot + events)", ["kind", "source"],
    buckets=FAST,
)
OBJECT_EVICTIONS = Counter(
    "durachat_object_evictions_total", "Objects dropped from memory", ["kind", "reason"]
)
MAILBOX_DEPTH = Histogram(
    "durachat_mailbox_depth", "Commands already queued when one is enqueued", ["kind"],
    buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
MAILBOX_OVERLOADED = Counter(
    "durachat_mailbox_overloaded_total", "Commands refused because a mailbox was full", ["kind"]
)
COMMAND_SECONDS = Histogram(
    "durachat_command_seconds", "Receive to reply, through the output gate", ["kind", "outcome"],
    buckets=FAST,
)
COMMIT_SECONDS = Histogram(
    "durachat_commit_seconds", "Append round trip of one group commit", ["kind"], buckets=FAST
)
COMMIT_BATCH = Histogram(
    "durachat_commit_batch_commands", "Commands per group commit", ["kind"], buckets=SIZES
)
COMMIT_CONFLICTS = Counter(
    "durachat_commit_conflicts_total", "Appends refused: the object moved on", ["kind"]
)
COMMIT_ERRORS = Counter(
    "durachat_commit_errors_total", "Batches failed by the bus (answered 'try again')", ["kind"]
)
PARTITIONS_OWNED = Gauge(
    "durachat_partitions_owned", "Partitions this replica owns", ["kind", "replica"]
)
LEASE_MOVES = Counter(
    "durachat_lease_moves_total", "Partition ownership changes on this replica", ["kind", "event"]
)
LEASE_RENEW_SECONDS = Histogram(
    "durachat_lease_renew_seconds", "Heartbeat (membership renewal) round trip", ["kind"],
    buckets=FAST,
)
LEASE_RENEW_FAILURES = Counter(
    "durachat_lease_renew_failures_total", "Lease cycles that failed", ["kind"]
)
ALARM_LAG_SECONDS = Histogram(
    "durachat_alarm_lag_seconds", "Delivery time minus due time of an alarm", ["kind"], buckets=SLOW
)
ALARM_RETRIES = Counter("durachat_alarm_retries_total", "Alarm deliveries retried", ["kind"])
ALARMS_GIVEN_UP = Counter("durachat_alarms_given_up_total", "Alarms dropped after retries", ["kind"])

# --- the gateway --------------------------------------------------------------------------------
WS_CONNECTIONS = Gauge("durachat_ws_connections", "Open chat sockets")
WS_FRAMES = Counter("durachat_ws_frames_total", "Client frames by outcome", ["outcome"])
WS_CLOSES = Counter("durachat_ws_closes_total", "Sockets closed by the gateway, by code", ["code"])
BROADCAST_SOCKETS = Histogram(
    "durachat_broadcast_sockets", "Sockets one broadcast is written to", buckets=SIZES
)
BROADCAST_WRITE_SECONDS = Histogram(
    "durachat_broadcast_write_seconds", "Time to write one broadcast to a room's sockets",
    buckets=FAST,
)
SLOW_READER_CLOSES = Counter(
    "durachat_slow_reader_closes_total", "Sockets closed because they did not read"
)
RATELIMIT_REFUSALS = Counter(
    "durachat_ratelimit_refusals_total",
    "Frames refused by the demo gate: source in_flight (the previous frame's charge was still "
    "in flight) or cooldown (the cooldown the IP's limiter announced)",
    ["source"],
)
QUOTA_REFUSALS = Counter(
    "durachat_quota_refusals_total", "AI requests refused by a user's quota", ["period", "unit"]
)
RATELIMIT_CHARGE_SECONDS = Histogram(
    "durachat_ratelimit_charge_seconds",
    "Round trip of one frame's charge to the ratelimit service (the demo gate is shut meanwhile)",
    buckets=FAST,
)
RATELIMIT_FALLBACK = Counter(
    "durachat_ratelimit_fallback_total", "Decisions the gateway made itself (service silent)"
)
RATELIMIT_FALLBACK_ACTIVE = Gauge(
    "durachat_ratelimit_fallback_active",
    "1 while the gateway limits by itself (the ratelimit service's last charge went unanswered)",
)

# --- the projector ----------------------------------------------------------------------------
PROJECTOR_APPLIED = Counter("durachat_projector_commits_total", "Commits projected", ["stream"])
PROJECTOR_LAG_MESSAGES = Gauge(
    "durachat_projector_lag_messages", "Commits stored but not projected yet", ["stream"]
)
PROJECTOR_LAG_SECONDS = Gauge(
    "durachat_projector_lag_seconds", "Now minus the stored time of the last commit projected",
    ["stream"],
)
PROJECTOR_DEAD_LETTERS = Counter(
    "durachat_projector_dead_letters_total", "Commits the projector could not apply", ["stream"]
)

# --- AI replies (services/context; GenAI semantic conventions' quantities) --------------------
AI_REPLIES = Counter("durachat_ai_replies_total", "AI replies by outcome", ["outcome", "reason"])
AI_FIRST_CHUNK_SECONDS = Histogram(
    "durachat_ai_first_chunk_seconds", "Provider request to first text (gen_ai time_to_first_chunk)",
    ["model"], buckets=SLOW,
)
AI_REPLY_SECONDS = Histogram(
    "durachat_ai_reply_seconds", "Whole reply (gen_ai.client.operation.duration)", ["model"],
    buckets=SLOW,
)
AI_TOKENS = Counter(
    "durachat_ai_tokens_total", "Tokens (gen_ai.client.token.usage)", ["direction", "model"]
)
AI_IN_FLIGHT = Gauge("durachat_ai_replies_in_flight", "AI questions being answered now (waiting or streaming)")
AI_QUESTIONS = Gauge(
    "durachat_ai_questions",
    "AI questions this context replica holds: waiting (quota, window, the room's start) or "
    "streaming (the provider's reply into the room)",
    ["state", "replica"],
)


class _Connections:
    """`durachat_nats_connected` and `durachat_nats_reconnects_total` (plus messages in and
    out) of the NATS connections a process watches, read from nats-py's own counters."""

    def __init__(self) -> None:
        self.watched: list[Any] = []

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        connected = GaugeMetricFamily("durachat_nats_connected", "1 while connected to NATS")
        reconnects = CounterMetricFamily("durachat_nats_reconnects", "Reconnections to NATS")
        messages = CounterMetricFamily("durachat_nats_messages", "NATS messages", labels=["direction"])
        connected.add_metric([], float(sum(1 for nc in self.watched if nc.is_connected)))
        reconnects.add_metric([], float(sum(nc.stats["reconnects"] for nc in self.watched)))
        for direction in ("in", "out"):
            messages.add_metric([direction], float(sum(nc.stats[f"{direction}_msgs"] for nc in self.watched)))
        yield connected
        yield reconnects
        yield messages


_CONNECTIONS = _Connections()
if not OFF:
    prometheus_client.REGISTRY.register(_CONNECTIONS)


def watch_connection(nc: Any) -> None:
    """Export `nc`'s connection state and counters with this process's metrics."""
    _CONNECTIONS.watched.append(nc)


def unwatch_connection(nc: Any) -> None:
    if nc in _CONNECTIONS.watched:
        _CONNECTIONS.watched.remove(nc)


def serve_metrics(name: str) -> str | None:
    """Serve this process's metrics on DURACHAT_METRICS_PORT (in a thread); the URL, or None."""
    port, host = SETTINGS.metrics_port, SETTINGS.metrics_host
    if port == "off":
        return None
    server, _ = start_http_server(port, addr=host)
    url = f"http://{host}:{server.server_port}/metrics"
    log.info("%s serves metrics at %s", name, url)
    return url


# --- uploads (services/gateway/uploads.py, services/upload) ------------------------------------
# No upload id, room or user in a label: statuses and outcomes only.
UPLOAD_BYTES = Counter("durachat_upload_bytes_total", "Upload bytes the bucket acknowledged (gateway)")
UPLOAD_PIECES = Counter("durachat_upload_pieces_total", "Upload pieces the bucket acknowledged (gateway)")
UPLOAD_PATCH_SECONDS = Histogram(
    "durachat_upload_patch_seconds", "tus PATCH requests, from routing to the answer (gateway)", buckets=SLOW
)
UPLOAD_REFUSALS = Counter(
    "durachat_upload_refusals_total", "tus requests refused, by HTTP status (gateway)", ["status"]
)
UPLOAD_HANDOFFS = Counter(
    "durachat_upload_handoffs_total", "Gemini hand-offs ended, by outcome: active or failed", ["outcome"]
)
UPLOAD_SECONDS_TO_ACTIVE = Histogram(
    "durachat_upload_seconds_to_active", "From a hand-off's start to Gemini's copy ACTIVE", buckets=SLOW
)
