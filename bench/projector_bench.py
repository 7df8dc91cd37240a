"""Projector figures: catch-up throughput, lag at a steady 1,000 events/s, full rebuild.

    python -m bench.projector_bench [--quick] [--json PATH]

1. Throughput: EVT_ROOM is pre-filled with stored commits of real Room events (encoded by
   ObjectEventStore, several events per commit as the room service's group commit writes
   them), then the real projector process (`python -m services.projector`) projects it
   into an empty read db. Its position is read from SQLite (`projector_positions`).
2. Lag: with that projector caught up, commits are published at a fixed rate of 1,000
   events/s (single-event commits, then 10-event commits). The lag of a commit is the time
   from its publish ack to the first poll (every 2 ms, own thread and connection) that sees
   the projector's position at or past it.
3. Rebuild: a fresh stream is filled with 1,000,000 events, then the Projector class,
   in-process, projects it from sequence 0 into a fresh database with a large batch.

Everything runs on 127.0.0.1 with free ports and a temp dir; every process started here is
stopped by its PID at the end, also on an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nats
import uvloop

from bench.measure import (
    BenchRun,
    CpuMeter,
    Profiler,
    arguments,
    others,
    percentiles,
    print_figures,
    profile_top,
)
from contracts.subjects import ROOM, event_subject
from services.readstore.projection import ROOM_STREAM
from services.room.aireply import AiDeadlines
from services.room.domainmodel import Room
from services.runtime.eventstore import CommitCodec, ObjectEventStore
from services.runtime.natsserver import NatsServerProcess, child_env, stop_process

REPO = Path(__file__).resolve().parents[1]
MEMBERS = 5  # sessions joined to every room before messages are posted
# The benchmark posts no question to the AI; the room asks for its deadlines on every post.
AI_DEADLINES = AiDeadlines(start_timeout=30.0, max_duration=180.0, stall_timeout=45.0)
WORDS = ("hello", "there", "how", "is", "everyone", "doing", "today", "the", "deploy",
         "went", "fine", "lunch", "at", "noon", "?", "ok", "see", "you", "soon", "thanks")








def cpu_figures(meter: CpuMeter) -> dict[str, float]:
    """The meter's window as figures: each process's CPU and the rest of the machine's, in %
    of one core."""
    cpu = meter.stop()
    return {f"{k}_cpu_pct": cpu[k] for k in meter.pids if k in cpu} | {"other_cpu_pct": others(cpu)}


STOP = threading.Event()  # set by SIGTERM / SIGINT (see stoppable)


def stop_requested() -> None:
    if STOP.is_set():
        raise asyncio.CancelledError


def log(text: str) -> None:
    print(f"[projector_bench] {text}", file=sys.stderr, flush=True)


# --- realistic stored commits -----------------------------------------------------------------


class CommitFactory:
    """Stored commits of real Room aggregates, as the room service writes them.

    Each room's first commit is Created plus MEMBERS MemberJoined; every later commit holds
    `per_commit` MessagePosted of one room (a group commit), the rooms taken in turn.
    """

    def __init__(self, rooms: int, prefix: str) -> None:
        self.codec = CommitCodec()  # what ObjectEventStore.encode uses
        self.rooms = [Room.open_public(f"{prefix}-{i:03d}") for i in range(rooms)]
        self.subjects = [event_subject(ROOM, r.name) for r in self.rooms]
        self.opened = [False] * rooms
        self.turn = 0
        self.posted = 0

    def _text(self) -> str:
        n = self.posted
        return " ".join(WORDS[(n * 7 + i * 3) % len(WORDS)] for i in range(4 + n % 9))

    def next_commit(self, per_commit: int) -> tuple[str, bytes, int]:
        """(subject, stored commit, number of events) of the next commit."""
        i = self.turn
        self.turn = (self.turn + 1) % len(self.rooms)
        room = self.rooms[i]
        if not self.opened[i]:
            self.opened[i] = True
            for s in range(MEMBERS):
                room.join(f"s{s}", f"member-{s}")
        else:
            now_ms = time.time_ns() // 1_000_000
            for _ in range(per_commit):
                self.posted += 1
                # the room service's message id is the PostMessage command id, a uuid4
                room.post(str(uuid.uuid4()), f"s{self.posted % MEMBERS}", self._text(),
                          now_ms=now_ms, now=now_ms / 1000, deadlines=AI_DEADLINES)
        events = room.collect_events()
        return self.subjects[i], self.codec.encode(events), len(events)


@dataclass
class StreamLedger:
    """What the bench wrote to the stream: events up to each stream sequence."""

    sequences: list[int] = field(default_factory=list)  # ascending
    cumulative: list[int] = field(default_factory=list)  # events up to and including it

    def add(self, sequence: int, events: int) -> None:
        total = (self.cumulative[-1] if self.cumulative else 0) + events
        self.sequences.append(sequence)
        self.cumulative.append(total)

    @property
    def last(self) -> int:
        return self.sequences[-1] if self.sequences else 0

    @property
    def events(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0

    def events_at(self, sequence: int) -> int:
        """Events in the stream up to `sequence`."""
        i = bisect.bisect_right(self.sequences, sequence)
        return self.cumulative[i - 1] if i else 0


async def fill(url: str, factory: CommitFactory, events: int, per_commit: int,
               ledger: StreamLedger) -> dict:
    """Publish commits holding `events` events, pipelined (publish_async, 4,000 in flight)."""
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=4000)
    await ObjectEventStore(nc, ROOM).ensure_stream()
    acks: list[tuple[asyncio.Future, int]] = []
    written = 0
    start = time.monotonic()
    while written < events:
        if len(acks) % 1000 == 0:
            stop_requested()
        subject, data, n = factory.next_commit(min(per_commit, events - written))
        acks.append((await js.publish_async(subject, data), n))
        written += n
    await js.publish_async_completed()
    seconds = time.monotonic() - start
    for future, n in acks:
        ledger.add(future.result().seq, n)
    info = await js.stream_info(ROOM_STREAM)
    await nc.close()
    assert info.state.last_seq == ledger.last, (info.state.last_seq, ledger.last)
    return {"events": written, "commits": len(acks), "seconds": seconds,
            "events_per_s": written / seconds, "stream_mb": info.state.bytes / 1e6}


# --- the projector's position, seen from SQLite -------------------------------------------------


class PositionWatcher(threading.Thread):
    """Polls projector_positions every `interval` s on its own connection; records each change
    as (monotonic time, position)."""

    def __init__(self, db: Path, interval: float = 0.002) -> None:
        super().__init__(daemon=True, name="position-watcher")
        self.db = db
        self.interval = interval
        self.times: list[float] = []
        self.positions: list[int] = []
        self.polls = 0
        self._halt = threading.Event()

    @property
    def position(self) -> int:
        return self.positions[-1] if self.positions else 0

    def run(self) -> None:
        conn = None
        while not self._halt.is_set():
            try:
                if conn is None:
                    conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, isolation_level=None)
                row = conn.execute("SELECT sequence FROM projector_positions WHERE stream = ?",
                                   (ROOM_STREAM,)).fetchone()
            except sqlite3.Error:  # not created or not migrated yet
                if conn is not None:
                    conn.close()
                    conn = None
                time.sleep(0.01)
                continue
            now = time.monotonic()
            self.polls += 1
            if row and row[0] != self.position:
                self.times.append(now)
                self.positions.append(row[0])
            time.sleep(self.interval)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def reached(self, sequence: int) -> float | None:
        """The first time the position was seen at or past `sequence`."""
        i = bisect.bisect_left(self.positions, sequence)
        return self.times[i] if i < len(self.times) else None

    async def wait_for(self, sequence: int, timeout: float, process: subprocess.Popen) -> float:
        deadline = time.monotonic() + timeout
        while self.position < sequence:
            stop_requested()
            if process.poll() is not None:
                raise RuntimeError(f"the projector exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"projector at {self.position}, not {sequence}, after {timeout}s")
            await asyncio.sleep(0.01)
        return self.reached(sequence)


def check_rows(db: Path, factory: CommitFactory) -> str:
    """The read store holds every message and room the bench wrote, and no dead letter."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        messages, rooms, dead = conn.execute(
            "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM rooms),"
            " (SELECT count(*) FROM dead_letters)").fetchone()
    finally:
        conn.close()
    want = (factory.posted, sum(factory.opened), 0)
    if (messages, rooms, dead) == want:
        return "ok"
    return f"MISMATCH messages/rooms/dead_letters {messages}/{rooms}/{dead}, expected {want}"


def start_projector(url: str, db: Path, batch: int, logfile: Path) -> subprocess.Popen:
    out = open(logfile, "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "services.projector"],
            cwd=REPO,
            env=child_env(nats_url=url, read_db=db, batch=batch),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        out.close()


def with_source(frame: str) -> str:
    """`func (path:line)`, plus that line's text when it is one of ours."""
    where = frame.rpartition(" (")[2].rstrip(")")
    path, _, line = where.rpartition(":")
    if path.startswith("services/") and line.isdigit():
        lines = (REPO / path).read_text().splitlines()
        if int(line) <= len(lines):
            return f"{frame}  {lines[int(line) - 1].strip()[:60]}"
    return frame


# --- phases 1 and 2: the real projector process ------------------------------------------------


async def publish_steady(url: str, factory: CommitFactory, rate: float, per_commit: int,
                         seconds: float) -> list[tuple[int, float, float]]:
    """Open loop: commits of `per_commit` events at `rate` events/s for `seconds`; returns
    (sequence, publish time, ack time) per commit."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    commits_per_s = rate / per_commit
    total = int(commits_per_s * seconds)
    records: list[list] = []

    def acked(record: list, future: asyncio.Future) -> None:
        record[2] = time.monotonic()
        if not future.cancelled() and future.exception() is None:
            record[0] = future.result().seq

    start = time.monotonic()
    for i in range(total):
        stop_requested()
        due = start + i / commits_per_s
        delay = due - time.monotonic()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        subject, data, _ = factory.next_commit(per_commit)
        record = [0, time.monotonic(), 0.0]
        future = await js.publish_async(subject, data)
        future.add_done_callback(lambda f, r=record: acked(r, f))
        records.append(record)
    await js.publish_async_completed()
    achieved = total * per_commit / (time.monotonic() - start)
    await nc.close()
    if any(r[0] == 0 for r in records):
        raise RuntimeError("a steady-rate publish was not acknowledged")
    log(f"steady: {total} commits of {per_commit}, achieved {achieved:.0f} events/s")
    return [tuple(r) for r in records]


async def projector_phases(url: str, tmp: Path, args, figures: dict) -> None:
    ledger = StreamLedger()
    factory = CommitFactory(args.rooms, "bench")
    log(f"filling EVT_ROOM with {args.events} events, {args.commit_events} per commit")
    filled = await fill(url, factory, args.events, args.commit_events, ledger)
    figures["fill for throughput"] = filled
    log(f"filled in {filled['seconds']:.1f} s ({filled['events_per_s']:.0f} events/s)")

    db = tmp / "read.db"
    watcher = PositionWatcher(db)
    watcher.start()
    spawned = time.monotonic()
    projector = start_projector(url, db, args.batch, tmp / "projector.log")
    log(f"projector pid {projector.pid}, batch {args.batch}")
    profiler = None
    try:
        pids = {"projector": projector.pid, "nats": args.server_pid, "bench": os.getpid()}
        meter = CpuMeter(pids).start()
        if args.profile:
            profiler = Profiler.start(projector.pid, args.profile)
        done = await watcher.wait_for(ledger.last, 600, projector)
        cpu = cpu_figures(meter)
        first_t, first_pos = watcher.times[0], watcher.positions[0]
        steady_events = ledger.events - ledger.events_at(first_pos)
        steady_commits = ledger.last - first_pos
        wall = done - spawned
        figures["[1] projector throughput"] = {
            "events": ledger.events, "commits": ledger.last, "events_per_commit": args.commit_events,
            "batch": args.batch, "seconds": wall,
            "events_per_s": steady_events / (done - first_t),
            "commits_per_s": steady_commits / (done - first_t),
            "events_per_s_with_startup": ledger.events / wall,
            "startup_s": first_t - spawned,
            **cpu,
            "rows": check_rows(db, factory),
        }
        log(f"caught up in {wall:.1f} s")
        if profiler is not None:
            await asyncio.to_thread(profiler.stop)

        for per_commit in args.lag_commit_events:
            await asyncio.sleep(0.5)
            meter = CpuMeter(pids).start()
            records = await publish_steady(url, factory, args.lag_rate, per_commit, args.lag_seconds)
            last_seq = max(r[0] for r in records)
            await watcher.wait_for(last_seq, 60, projector)
            cpu = cpu_figures(meter)
            lags, from_publish, seen_first = [], [], 0
            for sequence, published, acked in records:
                seen = watcher.reached(sequence)
                seen_first += seen < acked  # the ack was handled after the poll saw it
                lags.append(max(0.0, seen - acked) * 1000)
                from_publish.append((seen - published) * 1000)
            changes = bisect.bisect_right(watcher.positions, last_seq) - bisect.bisect_left(
                watcher.positions, records[0][0])
            kind = "single-event" if per_commit == 1 else f"{per_commit}-event"
            lag = percentiles(lags)
            figures[f"[2] lag at {args.lag_rate:.0f} events/s, {kind} commits"] = {
                "commits": len(records),
                "p50_ms": lag["p50"], "p99_ms": lag["p99"], "max_ms": lag["max"],
                "p99_from_publish_ms": percentiles(from_publish)["p99"],
                "seen_before_ack": seen_first,
                "commits_per_position_change": len(records) / max(1, changes),
                **cpu,
            }
        figures["position polls"] = {"interval_ms": watcher.interval * 1000,
                                     "polls": watcher.polls, "rows": check_rows(db, factory)}
    finally:
        if profiler is not None:
            profiler.stop()
        stop_process(projector)
        watcher.stop()


# --- phase 3: rebuild in-process ----------------------------------------------------------------


async def rebuild_phase(url: str, tmp: Path, args, figures: dict) -> None:
    from services.projector.main import Projector

    ledger = StreamLedger()
    factory = CommitFactory(args.rooms, "rebuild")
    log(f"filling a fresh EVT_ROOM with {args.rebuild_events} events, "
        f"{args.rebuild_commit_events} per commit")
    filled = await fill(url, factory, args.rebuild_events, args.rebuild_commit_events, ledger)
    figures["fill for rebuild"] = filled
    log(f"filled in {filled['seconds']:.1f} s ({filled['events_per_s']:.0f} events/s)")

    nc = await nats.connect(url)
    profiler = None
    try:
        db = tmp / "rebuild.db"
        profiler = Profiler.start(os.getpid(), rebuild_profile(args.profile)) if args.profile else None
        meter = CpuMeter({"projector": os.getpid(), "nats": args.server_pid}).start()  # in-process
        start = time.monotonic()
        projector = Projector(nc, db, batch=args.rebuild_batch)
        await projector.open()
        steps = 0
        while projector.position < ledger.last:
            stop_requested()
            await projector.step(timeout=5.0)
            steps += 1
        seconds = time.monotonic() - start
        cpu = cpu_figures(meter)
        projector.conn.close()
        if profiler is not None:
            await asyncio.to_thread(profiler.stop)
        figures["[3] full rebuild (in-process Projector)"] = {
            "events": ledger.events, "commits": ledger.last, "batch": args.rebuild_batch,
            "transactions": steps, "seconds": seconds, "events_per_s": ledger.events / seconds,
            "commits_per_s": ledger.last / seconds, **cpu,
            "db_mb": sum(p.stat().st_size for p in tmp.glob("rebuild.db*")) / 1e6,  # noqa: ASYNC240 (after the run)
            "rows": check_rows(db, factory),
        }
        log(f"rebuilt in {seconds:.1f} s")
    finally:
        if profiler is not None:
            profiler.stop()
        await nc.close()


def rebuild_profile(path: Path) -> Path:
    return path.with_name(path.stem + "-rebuild" + path.suffix)


# --- main ---------------------------------------------------------------------------------------


async def stoppable(coro) -> None:
    """Run `coro`; SIGTERM or SIGINT cancels it, so its `finally` blocks stop what it started.

    nats-py swallows a cancellation in places, so the long loops also check `stop_requested`.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def stop() -> None:
        STOP.set()
        task.cancel()

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        loop.add_signal_handler(sig, stop)
    try:
        await coro
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)
    stop_requested()


def run_phase(server_dir: Path, phase, tmp: Path, args, figures: dict) -> None:
    """Start a nats-server in `server_dir`, run `phase(url, tmp, args, figures)` on it under
    uvloop (a signal cancels it), stop the server."""
    server = NatsServerProcess(server_dir)
    try:
        server.start()
        args.server_pid = server.process.pid
        uvloop.run(stoppable(phase(server.url, tmp, args, figures)))
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        server.stop()


def main() -> int:
    parser = arguments("bench.projector_bench", __doc__, quick="a short smoke run (about 1 min)")
    parser.add_argument("--events", type=int, help="events for [1] (200,000; quick 20,000)")
    parser.add_argument("--rooms", type=int, default=100, help="rooms the events spread over")
    parser.add_argument("--commit-events", type=int, default=10,
                        help="message events per commit in the fill for [1]")
    parser.add_argument("--batch", type=int, default=1000,
                        help="DURACHAT_BATCH of the projector process (its default: 1000)")
    parser.add_argument("--lag-seconds", type=float, help="each lag run (20 s; quick 5 s)")
    parser.add_argument("--lag-rate", type=float, default=1000.0, help="events/s in [2]")
    parser.add_argument("--lag-commit-events", default="1,10",
                        help="events per commit of each lag run, comma-separated")
    parser.add_argument("--rebuild-events", type=int, help="events for [3] (1,000,000; quick 100,000)")
    parser.add_argument("--rebuild-commit-events", type=int, default=20)
    parser.add_argument("--rebuild-batch", type=int, default=10_000)
    parser.add_argument("--phases", default="1,3", help="1 (throughput, then lag [2]) and/or 3")
    parser.add_argument("--profile", type=Path,
                        help="py-spy record (raw) the projector process during [1] into this file, "
                        "and this process during [3] into <stem>-rebuild<suffix>")
    args = parser.parse_args()
    args.events = args.events or (20_000 if args.quick else 200_000)
    args.lag_seconds = args.lag_seconds or (5.0 if args.quick else 20.0)
    args.rebuild_events = args.rebuild_events or (100_000 if args.quick else 1_000_000)
    args.lag_commit_events = [int(n) for n in args.lag_commit_events.split(",") if n]
    phases = set(args.phases.split(","))
    figures: dict[str, dict] = {}

    with BenchRun(args, "durachat-projbench-") as run:
        if "1" in phases:
            run_phase(run.tmp / "nats-1", projector_phases, run.tmp, args, figures)
        if "3" in phases:
            run_phase(run.tmp / "nats-3", rebuild_phase, run.tmp, args, figures)
        run.report.update(figures)
        print_figures(figures, "[1] >= 10,000 events/s; [2] p99 <= 250 ms; "
                      "[3] 1,000,000 events <= 120 s")
        if args.profile:
            for label, raw in (("the projector process during [1]", args.profile),
                               ("the in-process rebuild [3]", rebuild_profile(args.profile))):
                if raw.exists():
                    print(f"py-spy, {label}: % of samples by innermost Python line ({raw})")
                    for name, share in profile_top(raw, 10, by_line=True)["own"]:
                        print(f"  {share:5.1f}%  {with_source(name)}")
    return run.status


if __name__ == "__main__":
    sys.exit(main())
