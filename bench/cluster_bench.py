"""durachat on a 3-node NATS JetStream cluster: fault drills under chat load, and what the
cluster and `sync_interval: always` cost.

    python -m bench.cluster_bench            # the drills, then throughput: 1 node vs 3, default vs always
    python -m bench.cluster_bench --quick    # fewer, shorter runs

Each drill runs on one shared LocalSystem with `nats_nodes=3` (streams and KV at R3) and two
room replicas, in fresh rooms: senders post one message at a time (the echo on their socket is
the acknowledgement), observers only listen, and an AI reply (the offline provider, slowed
down) streams across the fault. Figures per drill: the longest stall between acknowledged
messages, p99 of the acknowledgement latency during the fault, seconds until every room
partition has a live owner again, and how the AI reply ended. `check_drill` says what went
wrong, if anything: an acknowledged message missing or doubled on a socket or in the read
store, a socket's sequence out of order, the read store unequal to a fresh replay.

The tests in tests/e2e/test_cluster.py run the same drills and assert on `check_drill`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats
import websockets

from contracts.subjects import ROOM, event_stream
from services.localsystem import LocalSystem
from services.runtime.leases import lease_coverage
from services.runtime.natsserver import NatsServerProcess, NetnsNetwork

REPO = Path(__file__).resolve().parents[1]
AI_QUESTION = "@ai " + " ".join(f"w{i}" for i in range(30))  # a reply of ~60 chunks


def cluster_env(ai_delay: float = 0.3) -> dict[str, str]:
    return {
        "DURACHAT_RATE_INTERVAL": "0.000001",  # the senders far outrun the demo's per-IP limit
        "DURACHAT_AI_OFFLINE_DELAY": str(ai_delay),  # an AI reply long enough to span a fault
    }


def start_system(data_dir: Path, nodes: int = 3, sync_interval: str = "always",
                 room_replicas: int = 2, ai_delay: float = 0.3,
                 network: NetnsNetwork | None = None) -> LocalSystem:
    """The whole system on a cluster of `nodes` (in network namespaces with `network`)."""
    system = LocalSystem(data_dir, nats_nodes=nodes, room_replicas=room_replicas,
                         sync_interval=sync_interval, extra_env=cluster_env(ai_delay),
                         nats_network=network)
    try:
        system.start(timeout=60)
    except Exception:
        system.stop()
        print(system.logs())
        raise
    return system


# --- sockets ----------------------------------------------------------------------------------


class Socket:
    """A chat socket that records every frame it gets (a reader task), and can post."""

    def __init__(self, ws_url: str, room: str, name: str) -> None:
        self.url = f"{ws_url}/api/room/{room}/websocket"
        self.room, self.name = room, name
        self.frames: list[dict] = []
        self.ready = asyncio.Event()
        self.closed: str | None = None
        self._waiting: dict[str, asyncio.Future] = {}
        self._ws = None
        self._reader: asyncio.Task | None = None

    async def open(self) -> Socket:
        self._ws = await websockets.connect(self.url, max_size=None)
        self._reader = asyncio.create_task(self._read())
        await self._ws.send(json.dumps({"name": self.name}))
        await asyncio.wait_for(self.ready.wait(), 30)
        return self

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                frame = json.loads(raw)
                self.frames.append(frame)
                if frame.get("ready") is True:
                    self.ready.set()
                text = frame.get("message")
                if frame.get("name") == self.name and text in self._waiting:
                    self._waiting.pop(text).set_result(True)
                elif "error" in frame:
                    for future in self._waiting.values():
                        if not future.done():
                            future.set_result(frame["error"])
                    self._waiting.clear()
        except websockets.ConnectionClosed as exc:
            self.closed = f"closed: {exc}"
        finally:
            self.closed = self.closed or "closed"
            for future in self._waiting.values():
                if not future.done():
                    future.set_result(self.closed)

    async def post(self, text: str, timeout: float = 30.0) -> bool | str:
        """Send `text`; True once its echo came back (acknowledged), else the error."""
        assert self._ws is not None
        future = asyncio.get_running_loop().create_future()
        self._waiting[text] = future
        await self._ws.send(json.dumps({"message": text}))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._waiting.pop(text, None)
            return "no echo in time"

    def chat(self) -> list[str]:
        """The chat messages of load senders it saw, in order (sender-n texts)."""
        return [f["message"] for f in self.frames
                if f.get("kind") is None and isinstance(f.get("message"), str)
                and f.get("name", "").startswith("s") and "-m" in f["message"]]

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)


@dataclass
class Sender:
    socket: Socket
    pause: float
    acked: list[tuple[float, float, str]] = field(default_factory=list)  # sent, acked, text
    failed: list[tuple[float, str, str]] = field(default_factory=list)  # sent, text, why
    running: bool = True

    async def run(self) -> None:
        n = 0
        while self.running and not self.socket.closed:
            text = f"{self.socket.name}-m{n}"
            sent = time.monotonic()
            outcome = await self.socket.post(text)
            if outcome is True:
                self.acked.append((sent, time.monotonic(), text))
            else:
                self.failed.append((sent, text, str(outcome)))
            n += 1
            await asyncio.sleep(self.pause)


@dataclass
class DrillResult:
    name: str
    fault_at: float = 0.0
    recovered_at: float = 0.0
    acked: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    longest_stall: float = 0.0
    p99_during: float = 0.0
    owners_back: float | None = None
    unowned_for: float = 0.0
    ai_outcome: str = "?"
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def figures(self) -> dict:
        return {
            "acked": self.acked, "not acked": self.failed,
            "longest stall s": round(self.longest_stall, 2),
            "p99 during fault ms": round(self.p99_during * 1000, 1),
            "all partitions owned again after s": None if self.owners_back is None
            else round(self.owners_back, 2),
            "partitions unowned for s": round(self.unowned_for, 2),
            "AI reply": self.ai_outcome, "drill s": round(self.seconds, 1),
            "why not acked": self.failures[:4],
            "problems": self.problems[:5],
        }


# --- a drill ------------------------------------------------------------------------------------


async def quiet(exc: Exception) -> None:
    """A drill's own connection: a node that is down is expected, not worth a traceback."""


async def leader_of(nc, stream: str) -> str:
    info = await nc.jetstream().stream_info(stream)
    assert info.cluster is not None and info.cluster.leader, f"{stream} has no leader"
    return info.cluster.leader


async def watch_owners(nc, partitions: int, since: float, stop: asyncio.Event, result: DrillResult) -> None:
    """From the fault on: how long some room partition had no live owner, and when the last
    such time ended (a coverage that cannot be read counts as unowned)."""
    last_ok = since
    while not stop.is_set():
        t = time.monotonic()
        try:
            coverage = await asyncio.wait_for(lease_coverage(nc, ROOM), 2)
            complete = not coverage.unowned(partitions)
        except Exception:
            complete = False
        if complete:
            if t - last_ok > 0.3:  # there was a hole since the last good reading
                result.unowned_for += t - last_ok
                result.owners_back = t - since
            last_ok = t
        await asyncio.sleep(0.1)


async def run_drill(system: LocalSystem, name: str, fault: Callable[[], Awaitable[None]],
                    senders: int = 4, observers: int = 2, rooms: int = 2, pause: float = 0.05,
                    settle: float = 3.0) -> tuple[DrillResult, dict]:
    """Chat load in fresh rooms, an AI reply, `fault()` (which returns once the cluster is
    whole again), then the checks. Returns the result and what the checks need."""
    result = DrillResult(name)
    started = time.monotonic()
    nc = await nats.connect(servers=system.nats_url.split(","), max_reconnect_attempts=-1,
                            reconnect_time_wait=0.2, ping_interval=2, max_outstanding_pings=2,
                            error_cb=quiet)
    tag = uuid.uuid4().hex[:6]
    room_names = [f"d{tag}-{i}" for i in range(rooms)]
    sockets = []
    for i in range(senders):
        sockets.append(await Socket(system.ws_url, room_names[i % rooms], f"s{i}").open())
    watchers = [await Socket(system.ws_url, room_names[i % rooms], f"w{i}").open()
                for i in range(observers)]
    asker = await Socket(system.ws_url, room_names[0], "asker").open()
    load = [Sender(s, pause) for s in sockets]
    tasks = [asyncio.create_task(s.run()) for s in load]
    await asyncio.sleep(1.0)  # chatting before the fault (a fixed window of load)
    await asker.post(AI_QUESTION)
    await asyncio.sleep(0.5)  # the reply is streaming
    stop_watch = asyncio.Event()
    result.fault_at = time.monotonic()
    owners = asyncio.create_task(watch_owners(nc, system.partitions, result.fault_at, stop_watch, result))
    try:
        await fault()
        result.recovered_at = time.monotonic()
        await asyncio.sleep(settle)  # load goes on after the cluster is whole again
    finally:
        for s in load:
            s.running = False
        await asyncio.gather(*tasks, return_exceptions=True)
        stop_watch.set()
        await owners
    # The AI reply ends (completed or failed) on the asker's socket.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ai_final(asker):
        await asyncio.sleep(0.1)
    final = ai_final(asker)
    if final is None:
        result.ai_outcome = "did not end"
    elif isinstance(final.get("ai"), dict):
        result.ai_outcome = f"failed ({final['ai'].get('reason')})"
    else:
        result.ai_outcome = "completed"
    everyone = sockets + watchers + [asker]
    acked = [(s.socket.room, t) for s in load for _, _, t in s.acked]
    # Every acknowledged message reaches every socket of its room.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(
            set(t for r, t in acked if r == s.room) <= set(s.chat()) for s in everyone):
        await asyncio.sleep(0.1)
    for s in everyone:
        await s.close()
    await nc.close()
    acks = sorted(a for s in load for _, a, _ in s.acked)
    gaps = [b - a for a, b in zip(acks, acks[1:], strict=False)]
    result.longest_stall = max(gaps, default=0.0)
    during = sorted(a - t for s in load for t, a, _ in s.acked
                    if result.fault_at <= t <= result.recovered_at)
    result.p99_during = during[min(len(during) - 1, int(len(during) * 0.99))] if during else 0.0
    result.acked = len(acked)
    result.failed = sum(len(s.failed) for s in load)
    result.failures = sorted({why for s in load for _, _, why in s.failed})
    result.seconds = time.monotonic() - started
    return result, {"load": load, "sockets": everyone, "rooms": room_names, "asker": asker}


def ai_final(socket: Socket) -> dict | None:
    """The frame that ended the AI reply: its final message, or its failure."""
    for f in socket.frames:
        if f.get("kind") == "ai" or (isinstance(f.get("ai"), dict) and f["ai"].get("event") == "failed"):
            return f
    return None


# --- the checks ---------------------------------------------------------------------------------


def check_drill(system: LocalSystem, result: DrillResult, seen: dict) -> list[str]:
    """What went wrong in a drill (nothing: []): see the module's docstring."""
    problems: list[str] = []
    load: list[Sender] = seen["load"]
    acked_by_room: dict[str, list[str]] = {}
    maybe: set[str] = set()
    for s in load:
        acked_by_room.setdefault(s.socket.room, []).extend(t for _, _, t in s.acked)
        maybe.update(t for _, t, _ in s.failed)
    for socket in seen["sockets"]:
        if socket.closed and socket.closed != "closed":
            problems.append(f"{socket.name}: socket {socket.closed}")
        got = socket.chat()
        if len(got) != len(set(got)):
            doubled = sorted({t for t in got if got.count(t) > 1})[:3]
            problems.append(f"{socket.name}: messages doubled {doubled}")
        for sender in {t.split("-m")[0] for t in got}:
            numbers = [int(t.split("-m")[1]) for t in got if t.split("-m")[0] == sender]
            if numbers != sorted(numbers):
                problems.append(f"{socket.name}: {sender}'s messages out of order")
        missing = [t for t in acked_by_room.get(socket.room, []) if t not in set(got)]
        if missing:
            problems.append(f"{socket.name}: {len(missing)} acknowledged messages missing, "
                            f"e.g. {missing[:3]}")
        extra = [t for t in got if t not in set(acked_by_room.get(socket.room, [])) | maybe]
        if extra:
            problems.append(f"{socket.name}: messages nobody sent {extra[:3]}")
    problems += ai_stream_problems(seen["sockets"], seen["rooms"][0])
    problems += store_problems(system, acked_by_room, maybe)
    problems += replay_check(system)
    result.problems = problems
    return problems


def ai_stream_problems(sockets: list[Socket], room: str) -> list[str]:
    """Every socket of the AI's room saw the reply's chunks contiguous, once each."""
    problems = []
    for socket in sockets:
        if socket.room != room:
            continue
        text = ""
        for f in socket.frames:
            ai = f.get("ai")
            if isinstance(ai, dict) and ai.get("event") == "chunk":
                if ai["offset"] != len(text):
                    problems.append(f"{socket.name}: AI chunk at {ai['offset']}, had {len(text)}")
                    break
                text += ai["text"]
    return problems


def read_messages(db: Path, rooms: list[str]) -> list[str]:
    marks = ",".join("?" * len(rooms))
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        texts = [row[0] for row in conn.execute(
            f"SELECT text FROM messages WHERE kind = 'user' AND room IN ({marks})", rooms)]
        return [t for t in texts if t.startswith("s") and "-m" in t]  # the load's messages
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def store_problems(system: LocalSystem, acked_by_room: dict[str, list[str]], maybe: set[str]) -> list[str]:
    rooms = list(acked_by_room)
    acked = [t for texts in acked_by_room.values() for t in texts]
    deadline = time.monotonic() + 30
    while True:
        stored = read_messages(system.read_db, rooms)
        if set(acked) <= set(stored) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    problems = []
    missing = set(acked) - set(stored)
    if missing:
        problems.append(f"read store: {len(missing)} acknowledged messages missing, e.g. {sorted(missing)[:3]}")
    counts: dict[str, int] = {}
    for text in stored:
        counts[text] = counts.get(text, 0) + 1
    doubled = [t for t, n in counts.items() if n > 1]
    if doubled:
        problems.append(f"read store: messages stored twice {doubled[:3]}")
    per_sender_acked: dict[str, int] = {}
    per_sender_stored: dict[str, int] = {}
    for t in acked:
        per_sender_acked[t.split("-m")[0]] = per_sender_acked.get(t.split("-m")[0], 0) + 1
    for t in set(stored) - maybe:
        per_sender_stored[t.split("-m")[0]] = per_sender_stored.get(t.split("-m")[0], 0) + 1
    if per_sender_acked != per_sender_stored:
        problems.append(f"read store: per sender {per_sender_stored}, acknowledged {per_sender_acked}")
    return problems


def replay_check(system: LocalSystem, timeout: float = 30.0) -> list[str]:
    """`durachat-replay check`: the read store equals a fresh replay of the streams (retried
    while the projector is still catching up)."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(
            [sys.executable, "-m", "services.replay", "--nats", system.nats_url,
             "--db", str(system.read_db), "check"],
            capture_output=True, text=True, timeout=120, cwd=REPO,
            env={**os.environ, "COLUMNS": "250"},
        )
        if done.returncode == 0:
            return []
        if time.monotonic() > deadline:
            return [f"replay check exited {done.returncode}: {(done.stdout + done.stderr)[-600:]}"]
        time.sleep(1.0)


# --- the faults ---------------------------------------------------------------------------------


async def wait_cluster_whole(system: LocalSystem, timeout: float = 60.0) -> None:
    """Every node up and current, and every room partition owned."""
    assert system.nats_cluster is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(n.alive() and n.healthy() for n in system.nats_cluster.nodes) and system.healthy():
            return
        await asyncio.sleep(0.1)
    nodes = {n.name: (n.alive(), n.healthy()) for n in system.nats_cluster.nodes}
    raise TimeoutError(f"cluster not whole after {timeout}s: nodes (alive, current) {nodes}, "
                       f"gateway ready {system.healthy()}")


def node_named(system: LocalSystem, name: str) -> NatsServerProcess:
    assert system.nats_cluster is not None
    return system.nats_cluster.node(name)


async def find_leader(system: LocalSystem, stream: str) -> NatsServerProcess:
    nc = await nats.connect(servers=system.nats_url.split(","))
    try:
        return node_named(system, await leader_of(nc, stream))
    finally:
        await nc.close()


async def lead_elsewhere(system: LocalSystem, stream: str, away_from: str, timeout: float = 30.0) -> None:
    """Make `stream`'s leader a node other than `away_from` (leader step-downs), so a drill
    hits one Raft group, not every group that node happened to lead."""
    nc = await nats.connect(servers=system.nats_url.split(","))
    try:
        deadline = time.monotonic() + timeout
        while await leader_of(nc, stream) == away_from:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{stream} stays led by {away_from}")
            with contextlib.suppress(Exception):
                await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
            await asyncio.sleep(0.5)  # a new leader is elected in a moment
    finally:
        await nc.close()


def kill_leader_of(system: LocalSystem, stream: str, down_for: float = 6.0,
                   only: bool = False):
    """kill -9 of `stream`'s leader node; with `only`, the room stream is first made to be
    led by another node, so only `stream`'s group (and what else the node led) elects."""
    async def fault() -> None:
        if only:
            await lead_elsewhere(system, event_stream(ROOM), (await find_leader(system, stream)).name)
        node = await find_leader(system, stream)
        node.kill()
        await asyncio.sleep(down_for)  # the node stays dead a while; the rest carry on
        # From this (the main) thread: a node started from a worker thread would get SIGTERM
        # when that thread ends (PR_SET_PDEATHSIG, `die_with_parent`).
        node.start(wait=False)
        await wait_cluster_whole(system)
    return fault


def pause_node(system: LocalSystem, stream: str, seconds: float = 15.0):
    async def fault() -> None:
        node = await find_leader(system, stream)
        node.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)  # the drill's fault is 15 s of a frozen node
        finally:
            node.signal(signal.SIGCONT)
        await wait_cluster_whole(system)
    return fault


def rolling_restart(system: LocalSystem):
    async def fault() -> None:
        assert system.nats_cluster is not None
        for node in system.nats_cluster.nodes:
            await asyncio.to_thread(node.stop)  # SIGTERM: its leaders step down first
            node.start(wait=False)  # from the main thread, as above
            await wait_cluster_whole(system)
    return fault


def partition_node(system: LocalSystem, stream: str, seconds: float = 12.0):
    """Cut `stream`'s leader node off from the other nodes and every client (its TCP
    connections stay open), then heal the cut."""
    async def fault() -> None:
        network = system.nats_network
        assert network is not None and system.nats_cluster is not None
        node = await find_leader(system, stream)
        index = system.nats_cluster.nodes.index(node)
        network.cut(index)
        try:
            await asyncio.sleep(seconds)  # the drill's fault: a partition this long
        finally:
            network.heal(index)
        await wait_cluster_whole(system)
    return fault


DRILLS = {
    "kill-evt-room-leader": lambda s: kill_leader_of(s, event_stream(ROOM)),
    "kill-leases-leader": lambda s: kill_leader_of(s, "KV_leases-room", only=True),
    "sigstop-node-15s": lambda s: pause_node(s, event_stream(ROOM)),
    "rolling-sigterm": rolling_restart,
}
PARTITION_DRILL = "partition-node"  # needs NetnsNetwork: a cluster of its own


# --- throughput -----------------------------------------------------------------------------------


async def chat_throughput(system: LocalSystem, senders: int, seconds: float) -> dict:
    rooms = [f"tp-{uuid.uuid4().hex[:6]}-{i}" for i in range(max(1, senders // 2))]
    sockets = [await Socket(system.ws_url, rooms[i % len(rooms)], f"s{i}").open() for i in range(senders)]
    load = [Sender(s, 0.0) for s in sockets]
    tasks = [asyncio.create_task(s.run()) for s in load]
    await asyncio.sleep(seconds)  # a fixed measuring window
    for s in load:
        s.running = False
    await asyncio.gather(*tasks, return_exceptions=True)
    for s in sockets:
        await s.close()
    lat = sorted(a - t for s in load for t, a, _ in s.acked)
    return {"msgs/s": round(len(lat) / seconds, 1),
            "p50 ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
            "p99 ms": round(1000 * lat[int(len(lat) * 0.99)], 1) if lat else None}


def main() -> int:
    quick = "--quick" in sys.argv
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="durachat-cluster-bench-") as tmp:
        system = start_system(Path(tmp) / "drills")
        try:
            for name, make in DRILLS.items():
                result, seen = asyncio.run(run_drill(system, name, make(system)))
                check_drill(system, result, seen)
                figures[name] = result.figures()
                print(name, json.dumps(figures[name]), flush=True)
        finally:
            system.stop()
        why_not = NetnsNetwork.available()
        if why_not is None:
            network = NetnsNetwork(3).create()
            try:
                system = start_system(Path(tmp) / "partition", network=network)
                try:
                    result, seen = asyncio.run(run_drill(system, PARTITION_DRILL,
                                                         partition_node(system, event_stream(ROOM))))
                    check_drill(system, result, seen)
                    figures[PARTITION_DRILL] = result.figures()
                    print(PARTITION_DRILL, json.dumps(figures[PARTITION_DRILL]), flush=True)
                finally:
                    system.stop()
            finally:
                network.delete()
        else:
            figures[PARTITION_DRILL] = {"skipped": why_not}
        seconds = 5.0 if quick else 10.0
        for nodes in (1, 3):
            for sync in ("default", "always"):
                system = start_system(Path(tmp) / f"tp-{nodes}-{sync}", nodes=nodes,
                                      sync_interval=sync, room_replicas=1)
                try:
                    key = f"throughput {nodes} node(s), sync_interval {sync}"
                    figures[key] = asyncio.run(chat_throughput(system, 16, seconds))
                    print(key, json.dumps(figures[key]), flush=True)
                finally:
                    system.stop()
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
