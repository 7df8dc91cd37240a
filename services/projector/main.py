"""The projector process: a durable consumer per event stream, writing read models to SQLite.

Exactly-once effect: the rows of a batch and the stream position they reach are written in
ONE SQLite transaction. The position in the read store is the truth: on start (and when
the database file is swapped by a rebuild) the consumer is set to start right after it, and
a redelivered message at or below it is skipped. A crash at any point neither loses nor
doubles a row.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import Field

from services.readstore.projection import ROOM_STREAM, position, project_commit, record_position
from services.readstore.store import open_read_store, transaction
from services.readstore.uploads import UPLOAD_STREAM, project_upload_commit
from services.runtime import logs, metrics, tracing
from services.runtime.metrics import serve_metrics
from services.runtime.micro import EndpointCounts
from services.runtime.service import announce, connect
from services.runtime.settings import RuntimeSettings
from services.settings import ReadStore

log = logging.getLogger(__name__)


class ProjectorSettings(RuntimeSettings, ReadStore):
    batch: int = Field(
        1000, ge=1, le=10_000, description="stored commits (JetStream messages) per transaction"
    )
    projector_nice: int = Field(
        10, ge=0, le=19,
        description="CPU niceness the projector adds to its own: read models are background "
        "work, so on a busy host the rooms and gateways that carry live messages run first "
        "(0: the same priority as the other services)",
    )


class Projector:
    """Projects one event stream into the read store."""

    def __init__(
        self,
        nc: NATS,
        db_path: Path,
        stream: str = ROOM_STREAM,
        batch: int = 1000,
        name: str = "projector",
        project: Callable[[sqlite3.Connection, str, str, int, bytes], int] = project_commit,
    ) -> None:
        self.project = project
        self.nc = nc
        self.js = nc.jetstream()
        self.db_path = Path(db_path)
        self.stream = stream
        # the commits it projects, in `$SRV.STATS` (services/runtime/micro.py)
        self.counts = EndpointCounts(f"project-{stream}", stream)
        self.batch = batch
        self.durable = f"{name}-{stream}"  # another name, e.g. for a replay, is another consumer
        self.conn: sqlite3.Connection | None = None
        self._inode = 0
        self.position = 0
        self._delivered = 0
        self._sub = None

    async def open(self) -> None:
        """(Re)open the read store and start the consumer right after its position."""
        if self.conn is not None:
            self.conn.close()
        self.conn = open_read_store(self.db_path)
        self._inode = os.stat(self.db_path).st_ino
        self.position = position(self.conn, self.stream)
        await self._stream_exists()
        try:
            await self.js.delete_consumer(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            pass
        await self.js.add_consumer(
            self.stream,
            ConsumerConfig(
                durable_name=self.durable,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.position + 1,
                ack_policy=AckPolicy.ALL,
                max_ack_pending=-1,
                ack_wait=60,
            ),
        )
        self._sub = await self.js.pull_subscribe_bind(self.durable, stream=self.stream)
        self._delivered = 0  # the consumer's delivery number of the last message taken
        log.info("projecting %s into %s from sequence %d", self.stream, self.db_path, self.position + 1)

    async def _stream_exists(self) -> None:
        while True:
            try:
                await self.js.stream_info(self.stream)
                return
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(0.5)  # the room service creates it when it first starts

    def swapped(self) -> bool:
        """True when the database file was replaced (by `durachat-replay rebuild`)."""
        try:
            return os.stat(self.db_path).st_ino != self._inode
        except FileNotFoundError:
            return True

    async def step(self, timeout: float = 1.0) -> int:
        """Fetch and apply one batch; returns how many messages it applied."""
        if self.swapped():
            await self.open()
        try:
            msgs = await self._sub.fetch(self.batch, timeout=timeout)
        except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either when idle
            return 0
        if not msgs:
            return 0
        # Deliveries lost on the way (a pull answer cut by a node's restart, a consumer
        # leader change) must not be acknowledged with the ones after them: AckPolicy.ALL
        # would skip them for good. The consumer numbers its deliveries; a jump is a loss.
        contiguous = []
        for msg in msgs:
            if msg.metadata.sequence.consumer != self._delivered + 1:
                break
            self._delivered = msg.metadata.sequence.consumer
            contiguous.append(msg)
        applied = 0
        if contiguous:
            started = time.perf_counter_ns()
            links = ([link for m in contiguous if (link := tracing.link_of(m.headers))]
                     if tracing.ENABLED else [])
            with tracing.span(f"durachat.project {self.stream}", links=links, attributes={
                "messaging.batch.message_count": len(contiguous), "messaging.operation.type": "process",
            }), transaction(self.conn) as conn:
                for msg in contiguous:
                    sequence = msg.metadata.sequence.stream
                    if sequence <= self.position:
                        continue  # delivered again after a crash: already in the store
                    dead = self.project(conn, self.stream, msg.subject, sequence, msg.data)
                    if dead:
                        metrics.PROJECTOR_DEAD_LETTERS.labels(self.stream).inc(dead)
                    self.position = sequence
                    applied += 1
                record_position(conn, self.stream, self.position)
            await contiguous[-1].ack()  # AckPolicy.ALL: acknowledges up to this one
            self.counts.record_many(len(contiguous), time.perf_counter_ns() - started)
            last = contiguous[-1].metadata
            metrics.PROJECTOR_APPLIED.labels(self.stream).inc(applied)
            metrics.PROJECTOR_LAG_MESSAGES.labels(self.stream).set(last.num_pending or 0)
            if not last.num_pending:
                metrics.PROJECTOR_LAG_SECONDS.labels(self.stream).set(0.0)  # caught up
            elif last.timestamp is not None:
                metrics.PROJECTOR_LAG_SECONDS.labels(self.stream).set(
                    max(0.0, time.time() - last.timestamp.timestamp())
                )
        if len(contiguous) < len(msgs):
            log.warning("projecting %s: deliveries after %d never arrived; reading again from "
                        "sequence %d", self.stream, self._delivered, self.position + 1)
            await self.open()
        return applied

    async def run(self, stopping: asyncio.Event) -> None:
        await self._reopen(stopping)
        while not stopping.is_set():
            try:
                await self.step()
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                log.warning("projecting %s: %s; reopening", self.stream, exc)
                await asyncio.sleep(0.5)
                await self._reopen(stopping)

    async def _reopen(self, stopping: asyncio.Event) -> None:
        """`open`, again and again while the bus fails it (on a cluster the stream or its
        consumer may have no leader for an election's length)."""
        while not stopping.is_set():
            try:
                await self.open()
                return
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                log.warning("projecting %s: opening the consumer failed (%r); retrying", self.stream, exc)
                await asyncio.sleep(0.5)


def lower_priority(nice: int) -> None:
    """Yield the CPU to the live path. A commit reaches this consumer at the moment its room
    gets the append's ack and broadcasts it; on a host with few cores the projector's SQLite
    write competed with that broadcast (bench/socket_bench.py's member phase)."""
    if nice:
        try:
            os.nice(nice)
        except OSError as exc:  # not allowed here: run at the usual priority
            log.warning("projector: could not lower its CPU priority by %d (%s)", nice, exc)


async def serve(settings: ProjectorSettings) -> None:
    lower_priority(settings.projector_nice)
    url = serve_metrics("projector")
    tracing.setup("projector")  # only with an OTLP endpoint configured
    nc = await connect(settings, "durachat-projector")
    metrics.watch_connection(nc)
    # answers $SRV.PING like every service
    projector = Projector(nc, settings.read_db, batch=settings.batch)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    uploads = Projector(nc, settings.read_db, UPLOAD_STREAM, settings.batch, project=project_upload_commit)
    micro = await announce(nc, "projector", [projector.counts, uploads.counts],
                           **({"metrics": url} if url else {}))
    await asyncio.gather(projector.run(stopping), uploads.run(stopping))
    await micro.stop()
    # Nothing to flush: positions live in the read store, and an ack lost here only means a
    # redelivery that the position check skips. (A drain waited on the pending pull.)
    await nc.close()
    tracing.shutdown()


def main() -> None:
    import uvloop

    logs.configure("projector")
    uvloop.run(serve(ProjectorSettings()))


if __name__ == "__main__":
    main()
