"""Failover under `make run`: the launcher (`python -m services.run`) with 3 room replicas and
~50 senders chatting; kill -9 of one replica at a time.

    python -m bench.failover_bench            # 10 kills
    python -m bench.failover_bench --quick    # 3 kills, fewer senders

Figures: seconds from kill -9 to the first acknowledged message in every room the killed
replica owned (p50/max over the kills); seconds until the launcher's new replica holds its
share again; messages acknowledged vs stored (equal, none twice); cold start, stop, and
restart-after-stop times of the launcher. Everything on 127.0.0.1 with free ports and a temp
data dir; the launcher is stopped by its PID at the end (its children die with it).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import nats
import websockets

from bench.measure import BenchRun, arguments, percentiles, print_figures, raise_fd_limit
from contracts.keys import subject_token
from contracts.room import GetRoom
from contracts.subjects import ROOM, command_subject
from services.runtime.leases import partition_owners
from services.runtime.natsserver import free_port

REPO = Path(__file__).resolve().parents[1]


class Launcher:
    """`python -m services.run` on `data_dir` and `port`, its output in a file."""

    def __init__(self, data_dir: Path, port: int, replicas: int) -> None:
        self.data_dir = data_dir
        self.port = port
        env = {k: v for k, v in os.environ.items() if not k.startswith("DURACHAT_")}
        env.update(DURACHAT_DATA_DIR=str(data_dir), DURACHAT_PORT=str(port),
                   DURACHAT_NATS_PORT="0", DURACHAT_ROOM_REPLICAS=str(replicas),
                   DURACHAT_RATE_INTERVAL="0.000001")  # the senders far outrun the demo's limit
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.output = data_dir.parent / "launcher.out"
        self.started = time.monotonic()
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "services.run"], cwd=REPO,
                                            env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def run(self) -> dict:
        return json.loads((self.data_dir / "run.json").read_text())

    def wait_healthy(self, timeout: float = 60) -> float:
        """Seconds from start to the gateway saying it is ready (/readyz)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the launcher exited:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1):
                    return time.monotonic() - self.started
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"not healthy after {timeout}s:\n{self.logs()}")

    def stop(self) -> float:
        """SIGTERM; seconds until the launcher (and so everything) has exited."""
        t = time.monotonic()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return time.monotonic() - t

    def logs(self) -> str:
        return self.output.read_text(errors="replace")[-4000:]


def room_pids(run: dict) -> list[int]:
    return [pid for name, pid in run["pids"].items() if name.startswith("room-")]


async def spread(nc, pids: list[int], timeout: float = 60) -> float:
    """Seconds until the 16 room partitions are leased evenly by exactly `pids`."""
    t = time.monotonic()
    while True:
        owners = await partition_owners(nc, ROOM)
        counts = collections.Counter(p for o in owners.values() for p in pids if f"-{p}-" in o)
        if sum(counts.values()) == 16 and len(counts) == len(pids) and \
                max(counts.values()) - min(counts.values()) <= 1:
            return time.monotonic() - t
        if time.monotonic() - t > timeout:
            raise TimeoutError(f"partitions stuck at {counts}")
        await asyncio.sleep(0.05)


async def partition_of(nc, room: str) -> int:
    sub = await nc.subscribe(f"cmd.{ROOM}.*.{subject_token(room)}")
    await nc.request(command_subject(ROOM, room), GetRoom().model_dump_json().encode(), timeout=15)
    msg = await sub.next_msg(timeout=5)
    await sub.unsubscribe()
    return int(msg.subject.split(".")[2])


class Sender:
    """One chat client posting in its room, one message at a time; each ack is timed."""

    def __init__(self, ws_url: str, room: str, name: str, pause: float) -> None:
        self.ws_url, self.room, self.name, self.pause = ws_url, room, name, pause
        self.acked: list[tuple[float, float, str]] = []  # (sent, acknowledged, text)
        self.errors: list[str] = []
        self.running = True

    async def run(self) -> None:
        async with websockets.connect(f"{self.ws_url}/api/room/{self.room}/websocket") as ws:
            await ws.send(json.dumps({"name": self.name}))
            while not json.loads(await ws.recv()).get("ready"):
                pass
            n = 0
            while self.running:
                text = f"{self.name}-{n}"
                sent = time.monotonic()
                await ws.send(json.dumps({"message": text}))
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if frame.get("message") == text and frame.get("name") == self.name:
                        self.acked.append((sent, time.monotonic(), text))
                        break
                    if "error" in frame:
                        self.errors.append(frame["error"])
                        break
                n += 1
                await asyncio.sleep(self.pause)


async def failover(launcher: Launcher, senders_n: int, rooms_n: int, kills: int,
                   pause: float) -> dict:
    run = launcher.run()
    nc = await nats.connect(run["nats_url"])
    await spread(nc, room_pids(run))
    rooms = [f"fo-{uuid.uuid4().hex[:6]}-{i}" for i in range(rooms_n)]
    partitions = {room: await partition_of(nc, room) for room in rooms}
    ws_url = f"ws://127.0.0.1:{launcher.port}"
    senders = [Sender(ws_url, rooms[i % rooms_n], f"s{i}", pause) for i in range(senders_n)]
    tasks = [asyncio.create_task(s.run()) for s in senders]
    await asyncio.sleep(2)  # the senders are chatting
    failovers, backs, affected_counts = [], [], []
    for k in range(kills):
        run = launcher.run()
        owners = await partition_owners(nc, ROOM)
        # The owner of one bench room after another: each kill hits another replica's share.
        owner = owners.get(partitions[rooms[k % len(rooms)]], "")
        victim = next((p for p in room_pids(run) if f"-{p}-" in owner), room_pids(run)[k % 3])
        affected = {r for r, p in partitions.items() if f"-{victim}-" in owners.get(p, "")}
        affected_counts.append(len(affected))
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        # The first message sent after the kill and acknowledged, in every affected room.
        while True:
            firsts = {}
            for s in senders:
                if s.room in affected:
                    after = [acked for sent, acked, _ in s.acked if sent > killed]
                    if after:
                        firsts[s.room] = min(firsts.get(s.room, after[0]), after[0])
            if len(firsts) == len(affected):
                failovers.append(max(firsts.values(), default=killed) - killed)
                break
            if time.monotonic() - killed > 60:
                raise TimeoutError(f"kill {k}: rooms {affected - set(firsts)} still unanswered")
            if any(t.done() for t in tasks):
                [t.result() for t in tasks if t.done()]  # a sender failed: raise its error
            await asyncio.sleep(0.01)
        # The launcher restarts the replica; it takes its share again.
        while True:
            now = room_pids(launcher.run())
            if victim not in now and len(now) == 3:
                break
            await asyncio.sleep(0.05)
        await spread(nc, now)
        backs.append(time.monotonic() - killed)
        print(f"  kill {k + 1}/{kills}: pid {victim}, {len(affected)} rooms affected, answered "
              f"after {failovers[-1]:.2f}s, share back after {backs[-1]:.2f}s", flush=True)
    for s in senders:
        s.running = False
    await asyncio.gather(*tasks, return_exceptions=True)
    await nc.close()
    acked = [text for s in senders for _, _, text in s.acked]
    return {"failovers": failovers, "backs": backs, "affected": affected_counts,
            "acked": acked, "rooms": rooms, "errors": [e for s in senders for e in s.errors],
            "ack_ms": [1000 * (a - t) for s in senders for t, a, _ in s.acked]}


def stored_texts(db: Path, rooms: list[str], expect: int, timeout: float = 60) -> list[str]:
    """The user messages of `rooms` in the read store, once the projector has them all
    (or `timeout` has passed)."""
    deadline = time.monotonic() + timeout
    marks = ",".join("?" * len(rooms))
    while True:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            texts = [row[0] for row in conn.execute(
                f"SELECT text FROM messages WHERE kind = 'user' AND room IN ({marks})", rooms)]
        finally:
            conn.close()
        if len(texts) >= expect or time.monotonic() > deadline:
            return texts
        time.sleep(0.2)


def main() -> int:
    parser = arguments("bench.failover_bench", __doc__, quick="3 kills, 20 senders")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--rooms", type=int, default=16)
    parser.add_argument("--pause", type=float, default=0.2, help="s between a sender's posts")
    args = parser.parse_args()
    kills = 3 if args.quick else args.kills
    senders = 20 if args.quick else args.senders
    raise_fd_limit(4096)
    figures: dict[str, dict] = {}

    with BenchRun(args, "durachat-failover-") as bench:
        data_dir = bench.tmp / "data"
        port = free_port()
        launcher = Launcher(data_dir, port, replicas=3)
        bench.on_exit(launcher.stop, launcher.logs)
        cold = launcher.wait_healthy()
        result = asyncio.run(failover(launcher, senders, args.rooms, kills, args.pause))
        stored = stored_texts(data_dir / "read.db", result["rooms"], len(result["acked"]))
        acked = collections.Counter(result["acked"])
        kept = collections.Counter(stored)
        lost = sum((acked - kept).values())
        twice = sum(n - 1 for n in kept.values() if n > 1)
        stop_s = launcher.stop()
        again = Launcher(data_dir, port, replicas=3)
        bench.on_exit(again.stop, again.logs)
        restart = again.wait_healthy()
        again_stop = again.stop()

        stats = percentiles(result["failovers"])
        back = percentiles(result["backs"])
        figures[f"failover after kill -9 of 1 of 3 replicas ({senders} senders, "
                f"{args.rooms} rooms, lease TTL 3 s)"] = {
            "kills": kills, "first_ack_p50_s": stats["p50"], "first_ack_max_s": stats["max"],
            "share_back_p50_s": back["p50"], "share_back_max_s": back["max"],
            "rooms_affected_per_kill": sum(result["affected"]) / max(1, kills),
        }
        figures["messages"] = {
            "acknowledged": len(result["acked"]), "stored": len(stored), "lost": lost,
            "stored_twice": twice, "error_frames": len(result["errors"]),
            "ack_p50_ms": percentiles(result["ack_ms"])["p50"],
            "ack_max_ms": percentiles(result["ack_ms"])["max"],
        }
        figures["launcher (3 replicas)"] = {
            "cold_start_s": cold, "stop_s": stop_s, "restart_after_stop_s": restart,
            "stop_again_s": again_stop,
        }
        bench.report.update(figures)
        print_figures(figures, "first ack after a kill <= lease TTL + retry (~5 s); acknowledged "
                      "== stored, none twice")
        if lost or twice or len(stored) != len(result["acked"]):
            print("MISSED: acknowledged and stored messages differ", file=sys.stderr)
            bench.status = 1
    return bench.status


if __name__ == "__main__":
    sys.exit(main())
