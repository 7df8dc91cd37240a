"""The NATS micro service protocol (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`) with real counts.

nats-py's `nats.micro` answers the protocol and counts requests for the endpoints it
subscribes itself (`add_endpoint`, a queue group per endpoint). durachat's subjects are not
subscribed that way: a kind's commands (`cmd.<kind>.<partition>.<key>`) are subscribed per
partition by the replica that owns it, the admin views by every replica. So each of those
subscriptions counts what it handles in an `EndpointCounts`, and `CountedService` lists them
in `$SRV.INFO` and `$SRV.STATS` as the protocol defines an endpoint's statistics:

- `num_requests`: requests handled (answered);
- `num_errors`: those answered with an error (an `ErrorReply`, whatever its code), and
  `last_error` (`"<code>: <message>"`) of the last one;
- `processing_time`: total nanoseconds from receipt to answer (for a command: through its
  mailbox, its commit and the output gate), and `average_processing_time` (ns, integer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.micro.service import (
    EndpointInfo,
    EndpointStats,
    Service,
    ServiceConfig,
    ServiceInfo,
    ServiceStats,
)


@dataclass(slots=True)
class EndpointCounts:
    """One endpoint's statistics, as `$SRV.STATS` reports them."""

    name: str
    subject: str
    queue_group: str = ""  # none: the partition's owner (or every replica) answers
    num_requests: int = 0
    num_errors: int = 0
    processing_time: int = 0  # ns
    last_error: str = ""

    def record(self, elapsed_ns: int, error: str | None = None) -> None:
        self.num_requests += 1
        self.processing_time += elapsed_ns
        if error is not None:
            self.num_errors += 1
            self.last_error = error

    def record_many(self, requests: int, elapsed_ns: int) -> None:
        """`requests` handled together (a batch) in `elapsed_ns`."""
        self.num_requests += requests
        self.processing_time += elapsed_ns

    def record_reply(self, elapsed_ns: int, reply: bytes) -> None:
        """A command answered with `reply` (JSON): an ErrorReply counts as an error."""
        if not reply.startswith(b'{"type":"error"'):
            self.record(elapsed_ns)
            return
        try:
            parsed = json.loads(reply)
            error = f"{parsed.get('code')}: {parsed.get('message')}"
        except ValueError:
            error = reply[:200].decode(errors="replace")
        self.record(elapsed_ns, error)

    @property
    def average_processing_time(self) -> int:
        return self.processing_time // self.num_requests if self.num_requests else 0

    def stats(self) -> EndpointStats:
        return EndpointStats(
            name=self.name, subject=self.subject, queue_group=self.queue_group,
            num_requests=self.num_requests, num_errors=self.num_errors,
            processing_time=self.processing_time,
            average_processing_time=self.average_processing_time,
            last_error=self.last_error,
        )

    def info(self) -> EndpointInfo:
        return EndpointInfo(name=self.name, subject=self.subject, queue_group=self.queue_group)


class CountedService(Service):
    """nats-py's micro service, whose INFO and STATS also list `endpoints` (counted by
    the subscriptions that handle them)."""

    def __init__(self, client: NATS, config: ServiceConfig, endpoints: list[EndpointCounts]) -> None:
        super().__init__(client, config)
        self.counted = endpoints

    def stats(self) -> ServiceStats:
        stats = super().stats()
        stats.endpoints.extend(e.stats() for e in self.counted)
        return stats

    def info(self) -> ServiceInfo:
        info = super().info()
        info.endpoints.extend(e.info() for e in self.counted)
        return info

    async def reset(self) -> None:
        """`$SRV` has no reset verb; for callers of the library's `reset()`."""
        await super().reset()
        for e in self.counted:
            e.num_requests = e.num_errors = e.processing_time = 0
            e.last_error = ""


async def add_service(nc: NATS, endpoints: list[EndpointCounts], **config: Any) -> CountedService:
    service = CountedService(nc, ServiceConfig(**config), endpoints)
    await service.start()
    return service
