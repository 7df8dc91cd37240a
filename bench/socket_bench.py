"""One socket at full speed: single-socket saturation, durachat (this tree, and a base ref)
side by side with Cloudflare's workers-chat-demo on workerd, plus the 121-member latency.

    python -m bench.socket_bench                  # 1,000 -> 12,000 msg/s in 6 s steps (~6 min)
    python -m bench.socket_bench --quick          # 2 s steps, short member phase
    python -m bench.socket_bench --base e430908   # also the tree of that git ref, same run

One sender socket and one receiver socket in one room. The sender is offered each rate in
turn (every millisecond it writes the messages due by then); each message carries its send
time (CLOCK_MONOTONIC, one clock for every process here). Per step: messages delivered per
second to the receiver within the step, latency p50/p99 (send -> receiver), frames refused
with an error frame, "never delivered" (sent, not refused, not received by the end of the
step's drain), and CPU per delivered message of each server process (/proc/<pid>/stat
before and after the step). The per-IP limiter is off on both sides: durachat with
DURACHAT_RATE_LIMIT=false, the demo with its `checkLimit()` check removed, in a temp copy.

The member phase is bench/chat_bench.py's latency phase (1 sender at 20 msg/s, 120
listeners: 121 members) against each system, limiter off on both sides too; all systems are
up at once and measured in turns, `--rounds` times (medians printed).

workerd: set DURACHAT_BENCH_DEMO_DIR to a checkout of cloudflare/workers-chat-demo (dd32ce8)
and have wrangler 4.86.0 installed outside the repo (`npm install --prefix /work/cache/wrangler
wrangler@4.86.0`; DURACHAT_BENCH_WRANGLER names its bin/wrangler if elsewhere). Without them
the bench says so in one line and measures durachat alone. Nothing of either is committed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

from bench import load
from bench.load import join_all, now_ns
from bench.measure import (
    BenchRun,
    Child,
    arguments,
    child_main,
    cpu_sample,
    fmt,
    percentiles,
    raise_fd_limit,
    table,
    verdict,
    wait_quiet,
)
from services.runtime.natsserver import free_port

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WRANGLER = Path("/work/cache/wrangler/node_modules/.bin/wrangler")
LIMITER_CHECK = "if (!session.limiter.checkLimit()) {"
TARGET_PEAK_RATIO = 1.5  # durachat peak / workerd peak, one socket
TARGET_P99_AT_1000_MS = 10.0
TARGET_MEMBERS_P99_RATIO = 0.8
TARGET_MEMBERS_P50_MS = 5.0

SERVE = """
import json, pathlib, sys
from services.localsystem import LocalSystem
system = LocalSystem(pathlib.Path(sys.argv[1]), extra_env=json.loads(sys.argv[2]))
try:
    system.start()
    pids = {"gateway": system.gateway.pid, "room": system.rooms[0].pid,
            "nats": system.nats.process.pid, "projector": system.projector.pid}
    print(json.dumps({"host": system.host, "port": system.port, "pids": pids}), flush=True)
    sys.stdin.read()
finally:
    system.stop()
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = arguments("bench.socket_bench", __doc__, quick="2 s steps, 3 s member phase")
    # Up to well past what either system delivers from one socket: a peak is only measured
    # where the offer exceeds it (at 6,000/s durachat delivered all it was offered).
    p.add_argument("--rates", default="1000,2000,4000,6000,8000,10000,12000", help="offered msg/s, in order")
    p.add_argument("--step", type=float, help="seconds per rate step (default 6, quick 2)")
    p.add_argument("--drain", type=float, help="seconds a step may take to deliver (default 10, quick 3)")
    p.add_argument("--base", metavar="REF", help="also measure the tree of this git ref (e.g. e430908)")
    p.add_argument("--systems", default="base,durachat,workerd",
                   help="which of base,durachat,workerd to run (base needs --base)")
    p.add_argument("--no-members", action="store_true", help="skip the 121-member latency phase")
    p.add_argument("--no-saturation", action="store_true", help="skip the single-socket steps")
    p.add_argument("--members-duration", type=float, help="seconds measured (default 10, quick 3)")
    p.add_argument("--members-rate", type=float, default=20.0)
    p.add_argument("--listeners", type=int, default=120)
    p.add_argument("--rounds", type=int, help="member-phase rounds, each system in turn (default 3, quick 1)")
    args = p.parse_args(argv)
    args.step = args.step if args.step is not None else (2.0 if args.quick else 6.0)
    args.drain = args.drain if args.drain is not None else (3.0 if args.quick else 10.0)
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.members_duration is None:
        args.members_duration = 3.0 if args.quick else 10.0
    return args


# --- the systems under test ----------------------------------------------------------------------


class Server:
    """A system under test started by the bench: where it listens and its processes."""

    name: str
    host = "127.0.0.1"
    port = 0
    pids: dict[str, int]

    def stop(self) -> None:
        raise NotImplementedError


class Durachat(Server):
    """A LocalSystem of the tree at `src` (this one, or a base ref's), started by a launcher
    process run from that tree, so its code is the one imported."""

    def __init__(self, name: str, src: Path, data: Path, env: dict[str, str]) -> None:
        self.name = name
        child_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(data), json.dumps(env)], cwd=src, env=child_env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line:
            self.process.wait(30)
            raise RuntimeError(f"{name}: the system did not start; see {data}/*.log")
        info = json.loads(line)
        self.host, self.port, self.pids = info["host"], info["port"], info["pids"]

    def stop(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()  # the launcher stops its system (by PID) and exits
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Workerd(Server):
    """The chat demo under `wrangler dev` (workerd), from a temp copy without its limiter check."""

    def __init__(self, demo: Path, wrangler: Path, tmp: Path) -> None:
        self.name = "workerd"
        tmp.mkdir(parents=True, exist_ok=True)
        copy = tmp / "demo"
        shutil.copytree(demo, copy, ignore=shutil.ignore_patterns(".git", "node_modules", ".wrangler"))
        source = copy / "src" / "chat.mjs"
        text = source.read_text()
        if text.count(LIMITER_CHECK) != 1:
            raise RuntimeError(f"{source}: the limiter check {LIMITER_CHECK!r} was not found once")
        source.write_text(text.replace(LIMITER_CHECK, "if (false) {  // limiter check removed by bench/socket_bench"))
        self.port = free_port(self.host)
        env = os.environ | {"WRANGLER_SEND_METRICS": "false", "CI": "1", "NO_COLOR": "1"}
        self.log = open(tmp / "wrangler.log", "ab")
        self.process = subprocess.Popen(
            [str(wrangler), "dev", "--ip", self.host, "--port", str(self.port),
             "--log-level", "error", "--persist-to", str(tmp / "demo-state")],
            cwd=copy, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.port}/", timeout=1):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"wrangler dev did not come up; see {tmp / 'wrangler.log'}") from None
                time.sleep(0.2)
        workerds = [p for p in descendants(self.process.pid) if comm(p) == "workerd"]
        self.pids = {f"workerd{i or ''}": pid for i, pid in enumerate(workerds)}
        self.pids["wrangler(node)"] = self.process.pid

    def stop(self) -> None:
        pids = [p for p in descendants(self.process.pid)]
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pid in pids:  # wrangler's children, by the PIDs it started
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        self.log.close()


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(children)
            todo.extend(children)
    return found


def workerd_setup() -> tuple[Path, Path] | str:
    """(demo dir, wrangler) or why workerd is not measured."""
    demo = os.environ.get("DURACHAT_BENCH_DEMO_DIR")
    wrangler = Path(os.environ.get("DURACHAT_BENCH_WRANGLER", DEFAULT_WRANGLER))
    if not demo or not (Path(demo) / "src" / "chat.mjs").is_file():
        return "DURACHAT_BENCH_DEMO_DIR does not name a workers-chat-demo checkout"
    if not wrangler.exists():
        return f"no wrangler at {wrangler} (npm install --prefix /work/cache/wrangler wrangler@4.86.0)"
    return Path(demo), wrangler


# --- the load: one sender, one receiver, offered rates in steps -----------------------------------


MESSAGE = re.compile(rb'"message":"(\d+):(\d+):(\d+)"')


async def saturate(cfg: dict) -> dict:
    room, rates, step, drain = cfg["room"], cfg["rates"], cfg["step"], cfg["drain"]
    received: dict[int, list[tuple[int, int]]] = {i: [] for i in range(-1, len(rates))}
    refused: dict[int, int] = {i: 0 for i in range(-1, len(rates))}
    current = [-1]

    def on_receiver(rx: int, data: bytes) -> None:
        match = MESSAGE.search(data)
        if match:
            received[int(match.group(1))].append((rx, int(match.group(3))))

    def on_sender(rx: int, data: bytes) -> None:
        if data.startswith(load.ERROR_PREFIX):
            refused[current[0]] += 1

    receiver = (await join_all(cfg, [(room, "receiver", on_receiver)]))[0]
    sender = (await join_all(cfg, [(room, "sender", on_sender)]))[0]
    steps = []
    try:
        for index, rate in [(-1, cfg["warmup_rate"]), *enumerate(rates)]:
            current[0] = index
            duration = cfg["warmup"] if index < 0 else step
            before = cpu_sample(cfg["pids"])
            t0 = time.monotonic()
            sent = 0
            total = int(round(rate * duration))
            while sent < total:
                due = min(total, int((time.monotonic() - t0) * rate) + 1)
                while sent < due:
                    sender.send_text(f'{{"message":"{index}:{sent}:{now_ns()}"}}')
                    sent += 1
                await asyncio.sleep(0.001)
            window_end = t0 + duration
            end_ns = int(window_end * 1e9)
            deadline = time.monotonic() + drain
            while (len(received[index]) + refused[index] < sent and time.monotonic() < deadline
                   and sender.open and receiver.open):
                await asyncio.sleep(0.01)
            after = cpu_sample(cfg["pids"])
            if index < 0:
                continue
            got = received[index]
            in_window = sum(1 for rx, _ in got if rx <= end_ns)
            steps.append({
                "offered": rate,
                "sent": sent,
                "send_s": round(time.monotonic() - t0, 2),
                "delivered": len(got),
                "delivered_per_s": round(in_window / duration, 1),
                "refused": refused[index],
                "never_delivered": max(0, sent - len(got) - refused[index]),
                "latency_ms": percentiles([rx - tx for rx, tx in got], 1e6),
                "cpu_us_per_msg": {
                    k: round(1e6 * (after[k] - before[k]) / max(1, len(got)), 1)
                    for k in after if k in before and k != "machine"
                },
                "machine_cpu_s": round(after["machine"] - before["machine"], 2),
                "sockets_open": sender.open and receiver.open,
            })
            if not (sender.open and receiver.open):
                break
    finally:
        await load.close_all([sender, receiver])
    return {"steps": steps, "first_error": sender.first_error.decode(errors="replace")[:200]
            if sender.first_error else None}


def saturate_entry(cfg: dict, conn, parent: int) -> None:
    child_main(lambda: saturate(cfg), conn, parent)


def run_saturation(server: Server, args, room: str) -> dict:
    cfg = {
        "host": server.host, "port": server.port, "pids": server.pids, "room": room,
        "rates": args.rates, "step": args.step, "drain": args.drain,
        "warmup_rate": 500.0, "warmup": 1.0, "compression": "none",
        "connect_concurrency": 2, "open_timeout": 30.0,
    }
    child = Child(saturate_entry, (cfg,), f"socket-bench-{server.name}")
    try:
        timeout = len(args.rates) * (args.step + args.drain + 5) + 60
        return child.receive(timeout)
    finally:
        child.stop(5)


def run_members(server: Server, args, room: str) -> dict:
    from bench.chat_bench import latency_run

    base = {
        "host": server.host, "port": server.port, "pids": server.pids,
        "compression": "none", "uvloop": True, "connect_concurrency": 32,
        "open_timeout": 30.0, "barrier_timeout": 120.0, "drain_timeout": 10.0,
    }
    ns = SimpleNamespace(rate=args.members_rate, duration=args.members_duration, warmup=1.0,
                         latency_procs=1)
    return latency_run(base, ns, args.listeners, room)


# --- the report -----------------------------------------------------------------------------------


def print_saturation(name: str, result: dict) -> None:
    steps = result["steps"]
    processes = sorted({k for s in steps for k in s["cpu_us_per_msg"]})
    rows = []
    for s in steps:
        lat = s["latency_ms"]
        rows.append([
            f"{s['offered']:,.0f}/s", f"{s['delivered_per_s']:,.0f}/s",
            fmt(lat.get("p50")), fmt(lat.get("p99")), str(s["refused"]), str(s["never_delivered"]),
            *[fmt(s["cpu_us_per_msg"].get(p), 0) for p in processes],
        ])
    print(f"\n{name}: one sender socket, one receiver socket, one room")
    print(table(rows, ["offered", "delivered", "p50 ms", "p99 ms", "refused", "never delivered",
                       *[f"{p} µs/msg" for p in processes]]))
    if result.get("first_error"):
        print(f"  first error frame: {result['first_error']}")


def peak(result: dict) -> float:
    return max((s["delivered_per_s"] for s in result["steps"]), default=0.0)


def at_rate(result: dict, rate: float) -> dict:
    return next((s for s in result["steps"] if s["offered"] == rate), {})


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def print_comparison(report: dict, args) -> None:
    sat = report["saturation"]
    names = list(sat)
    if names:
        print("\nsummary (one socket)")
    rows = []
    for name in names:
        s1000 = at_rate(sat[name], 1000.0).get("latency_ms", {})
        rows.append([name, f"{peak(sat[name]):,.0f}/s", fmt(s1000.get("p50")), fmt(s1000.get("p99")),
                     str(sum(s["never_delivered"] for s in sat[name]["steps"]))])
    if names:
        print(table(rows, ["system", "peak delivered", "p50 @1000/s ms", "p99 @1000/s ms",
                           "never delivered"]))
    members = report.get("members", {})
    if members:
        print(f"\n{args.listeners + 1} members, 1 sender at {args.members_rate:g} msg/s "
              f"({args.members_duration:g} s)")
        rows = [[name, fmt(m["latency_ms"].get("p50")), fmt(m["latency_ms"].get("p99")),
                 str(m["lost"]), str(m["error_frames"])] for name, m in members.items()]
        print(table(rows, ["system", "p50 ms", "p99 ms", "lost", "error frames"]))
    ratios: dict[str, float | None] = {}
    if "workerd" in sat and "durachat" in sat:
        ours, theirs = sat["durachat"], sat["workerd"]
        o1000 = at_rate(ours, 1000.0).get("latency_ms", {})
        t1000 = at_rate(theirs, 1000.0).get("latency_ms", {})
        ratios["peak"] = ratio(peak(ours), peak(theirs))
        ratios["p50_at_1000"] = ratio(o1000.get("p50"), t1000.get("p50"))
        ratios["p99_at_1000"] = ratio(o1000.get("p99"), t1000.get("p99"))
    if "workerd" in members and "durachat" in members:
        ours_m, theirs_m = members["durachat"]["latency_ms"], members["workerd"]["latency_ms"]
        ratios["members_p50"] = ratio(ours_m.get("p50"), theirs_m.get("p50"))
        ratios["members_p99"] = ratio(ours_m.get("p99"), theirs_m.get("p99"))
    if ratios:
        report["ratios_durachat_over_workerd"] = ratios
        print("\ndurachat / workerd: " + ", ".join(f"{k} {fmt(v)}" for k, v in ratios.items()))
    if "peak" in ratios:
        print(f"  peak >= {TARGET_PEAK_RATIO}x workerd's: "
              f"{verdict((ratios['peak'] or 0) >= TARGET_PEAK_RATIO)}")
    if "members_p99" in ratios:
        print(f"  {args.listeners + 1}-member p99 <= {TARGET_MEMBERS_P99_RATIO}x workerd's: "
              f"{verdict((ratios['members_p99'] or 99) <= TARGET_MEMBERS_P99_RATIO)}")
    if "durachat" in sat:
        p99 = at_rate(sat["durachat"], 1000.0).get("latency_ms", {}).get("p99")
        print(f"  durachat p99 at 1,000/s <= {TARGET_P99_AT_1000_MS:g} ms: "
              f"{verdict(None if p99 is None else p99 <= TARGET_P99_AT_1000_MS) or '-'}")
    if "durachat" in members:
        p50 = members["durachat"]["latency_ms"].get("p50")
        print(f"  durachat {args.listeners + 1}-member p50 <= {TARGET_MEMBERS_P50_MS:g} ms: "
              f"{verdict(None if p50 is None else p50 <= TARGET_MEMBERS_P50_MS) or '-'}")


# --- main -----------------------------------------------------------------------------------------


def source_tree(name: str, tmp: Path, args) -> Path:
    """The tree a durachat system runs from: this one, or the base ref's (git archive)."""
    if name != "base":
        return REPO
    src = tmp / "src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", args.base],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    return src


def start(name: str, src: Path, tmp: Path, data: str, env: dict[str, str]) -> Server:
    if name == "workerd":
        demo, wrangler = workerd_setup()  # type: ignore[misc]
        return Workerd(demo, wrangler, tmp / data)
    return Durachat(name, src, tmp / data, env | {"DURACHAT_MAX_SOCKETS_PER_IP": "100000"})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit(4096)
    targets = {"peak_ratio": TARGET_PEAK_RATIO, "p99_at_1000_ms": TARGET_P99_AT_1000_MS,
               "members_p99_ratio": TARGET_MEMBERS_P99_RATIO, "members_p50_ms": TARGET_MEMBERS_P50_MS}
    with BenchRun(args, "durachat-socket-bench-", targets) as run:
        report = run.report
        report["saturation"], report["members"] = {}, {}
        plan: list[str] = []
        if "base" in args.systems and args.base:
            plan.append("base")
        if "durachat" in args.systems:
            plan.append("durachat")
        if "workerd" in args.systems:
            setup = workerd_setup()
            if isinstance(setup, str):
                print(f"workerd not measured: {setup}; durachat alone.")
            else:
                plan.append("workerd")
        print(f"socket bench: {os.cpu_count()} CPUs, steps {', '.join(f'{r:,.0f}' for r in args.rates)} "
              f"msg/s x {args.step:g} s; systems: {', '.join(plan)}", flush=True)
        sources: dict[str, Path] = {}
        for name in plan:
            tmp = run.tmp / name
            tmp.mkdir()
            sources[name] = source_tree(name, tmp, args)
            if args.no_saturation:
                continue
            server = start(name, sources[name], tmp, "data", {"DURACHAT_RATE_LIMIT": "false"})
            run.on_exit(server.stop)
            print(f"{name}: port {server.port}, processes {server.pids}", flush=True)
            wait_quiet(list(server.pids.values()))
            report["saturation"][name] = run_saturation(server, args, f"sock-{name}-{os.getpid()}")
            print_saturation(name, report["saturation"][name])
            server.stop()
        if not args.no_members:
            # Every system up at once (idle between its turns), measured in turns, round after
            # round: a machine whose other load drifts disturbs each system alike. The limiter
            # is off on both sides, as in the steps: with it, durachat (as the demo) refuses a
            # frame sent within the previous one's limiter round trip, which a late sender does.
            servers = {}
            for name in plan:
                servers[name] = start(name, sources[name], run.tmp / name, "data-members",
                                      {"DURACHAT_RATE_LIMIT": "false"})
                run.on_exit(servers[name].stop)
            rounds: dict[str, list[dict]] = {name: [] for name in plan}
            for round_ in range(args.rounds):
                for name, server in servers.items():
                    wait_quiet(list(server.pids.values()))
                    result = run_members(server, args, f"m{round_}-{name}-{os.getpid()}")
                    rounds[name].append(result)
                    m = result["latency_ms"]
                    print(f"round {round_ + 1}: {name}: {args.listeners + 1} members: p50 "
                          f"{fmt(m.get('p50'))} ms, p99 {fmt(m.get('p99'))} ms", flush=True)
            for name, results in rounds.items():
                report["members"][name] = {
                    "rounds": results,
                    "latency_ms": {q: statistics.median(r["latency_ms"][q] for r in results)
                                   for q in ("p50", "p99")},
                    "lost": sum(r["lost"] for r in results),
                    "error_frames": sum(r["error_frames"] for r in results),
                }
            for server in servers.values():
                server.stop()
        print_comparison(report, args)
    return run.status


if __name__ == "__main__":
    sys.exit(main())
