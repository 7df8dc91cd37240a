"""durachat limits benchmark: what the per-IP limiter costs on the chat path, and whether one
flooding IP slows everyone else down.

    python -m bench.limits_bench            # the default run (about 4 minutes)
    python -m bench.limits_bench --quick    # a short run (1-2.5 minutes)
    python -m bench.limits_bench --json out.json

[1] Limiter overhead: 1 sender at 100 msg/s and 10 listeners, against a system with
    DURACHAT_RATE_LIMIT=false (A) and one with the limiter on but out of reach
    (DURACHAT_RATE_INTERVAL=0.000001) (B), each in its own LocalSystem, alternately A B A B.
[2] Fairness under a flood: the demo's real limits (5 s / 20 s). Idle sockets from many IPs,
    legitimate senders and listeners (one IP each, under the limit) in one room, measured
    without and then with one IP (127.0.2.1) flooding frames as fast as the gateway takes them.

Client IPs are simulated by binding each client socket to its own 127.x.y.z source address
(all of 127.0.0.0/8 is loopback on Linux). Every process started here is stopped by PID
(LocalSystem.stop, the load processes by their Process handles); temp dirs only. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import time
from array import array
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from bench import chat_bench, load
from bench.load import ns
from bench.measure import (
    BenchRun,
    Child,
    Profiler,
    arguments,
    child_main,
    cpu_percent,
    cpu_sample,
    fmt_stats,
    others,
    percentiles,
    profile_top,
    raise_fd_limit,
    table,
    uninterrupted,
    verdict,
    wait_quiet,
)
from contracts.ratelimit import RATE_LIMITED
from services.gateway.protocol import error_frame

TARGET_ADDED_P99_MS = 1.0
TARGET_FLOOD_RATIO = 1.2
REFUSAL = error_frame(RATE_LIMITED).encode()  # the very bytes the gateway sends
FLOOD_IP = "127.0.2.1"
now_ns = time.monotonic_ns


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = arguments("bench.limits_bench", __doc__,
                  quick="short run: [1] 3 s per run, [2] 8 s per phase")
    p.add_argument("--parts", default="1,2", help="comma-separated subset of 1,2")
    g = p.add_argument_group("[1] limiter overhead")
    g.add_argument("--duration", type=float, help="seconds measured per run (default 10, quick 3)")
    g.add_argument("--warmup", type=float, help="warm-up seconds per run (default 1, quick 0.5)")
    g.add_argument("--rounds", type=int, default=2, help="A B pairs (2: A B A B)")
    g.add_argument("--rate", type=float, default=100.0, help="messages/s of the one sender")
    g.add_argument("--listeners", type=int, default=10, help="listener sockets")
    g = p.add_argument_group("[2] fairness under a flood")
    g.add_argument("--phase", type=float, help="seconds per phase (default 30, quick 8)")
    g.add_argument("--settle", type=float, default=2.0,
                   help="seconds of legitimate traffic before the first phase (not measured)")
    g.add_argument("--legit-senders", type=int, default=100,
                   help="legitimate senders, one source IP each (127.0.1.x, then 127.0.3.x...)")
    g.add_argument("--legit-interval", type=float, default=5.5,
                   help="seconds between one sender's messages (the limit is one per 5 s)")
    g.add_argument("--legit-listeners", type=int, default=20,
                   help="legitimate listeners, one source IP each; latency is measured at these")
    g.add_argument("--idle-ips", type=int, default=50, help="IPs of the idle sockets (127.0.0.2...)")
    g.add_argument("--idle-per-ip", type=int, default=20, help="idle sockets per IP")
    g.add_argument("--idle-rooms", type=int, default=10, help="rooms the idle sockets are in")
    g.add_argument("--flood-sockets", type=int, default=16,
                   help=f"sockets of the flooding IP {FLOOD_IP} (its burst names 4 of them; the "
                        "others stay unnamed, their frames are refused all the same)")
    g.add_argument("--flood-window", type=int, default=16,
                   help="frames each flooding socket keeps unanswered (it sends the next as "
                        "soon as a reply comes back)")
    g.add_argument("--profile", type=Path, metavar="PATH",
                   help="py-spy-record the gateway during the flood phase into PATH (raw "
                        "collapsed stacks) and print its top functions")
    g = p.add_argument_group("system")
    g.add_argument("--partitions", type=int, default=16)
    g.add_argument("--quiet-wait", type=float,
                   help="seconds to wait, before each measurement, for the machine to be under "
                        "25%% of a core busy (default 30, quick 10)")
    g.add_argument("--connect-concurrency", type=int, default=32, help="socket opens in flight")
    args = p.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else (10.0 if args.quick else 30.0)
    args.phase = args.phase if args.phase is not None else (8.0 if args.quick else 30.0)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if set(args.parts) - {"1", "2"}:
        p.error("--parts takes 1, 2 or 1,2")
    if not 1 <= args.idle_ips <= 250:
        p.error("--idle-ips must be 1..250 (127.0.0.2..251)")
    if args.legit_senders + args.legit_listeners > 250 * 250:
        p.error("too many legitimate clients")
    return args


# --- addresses ----------------------------------------------------------------------------------


def idle_ip(i: int) -> str:
    return f"127.0.0.{2 + i}"


def legit_ip(k: int) -> str:
    """The k-th legitimate client's address: 127.0.1.1-250, then 127.0.3.x, 127.0.4.x, ...
    (127.0.2.x is the flooder's)."""
    blocks = [1, *range(3, 256)]
    return f"127.0.{blocks[k // 250]}.{1 + k % 250}"


# --- load side (spawned processes) --------------------------------------------------------------


async def sleep_until(t_ns: int) -> None:
    delay = (t_ns - now_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


async def idle_role(cfg: dict, conn) -> dict:
    """Idle sockets: each sends its name frame (the first 4 per IP are named, the rest are
    refused and stay open, unnamed), then nothing until the parent says stop."""
    specs = [
        (f"idle-{(i * cfg['idle_per_ip'] + j) % cfg['idle_rooms']}", f"i{i}-{j}", None, idle_ip(i))
        for i in range(cfg["idle_ips"]) for j in range(cfg["idle_per_ip"])
    ]
    t0 = time.monotonic()
    sockets = await load.join_all(cfg, specs)
    conn.send({"ready": True, "open": len(sockets), "named": sum(s.named for s in sockets),
               "open_seconds": round(time.monotonic() - t0, 2)})
    await load.from_parent(conn)  # "stop"
    still_open = sum(1 for s in sockets if s.open)
    await load.close_all(sockets)
    return {"open_at_end": still_open}


async def legit_role(cfg: dict, conn) -> dict:
    """Senders (one IP each) on a fixed schedule, and listeners (one IP each), in one room."""
    room, n_s, n_l = cfg["room"], cfg["senders"], cfg["listeners"]
    sender_prefix = b'{"name":"s'
    listener_recs: list[list[tuple[int, bytes]]] = [[] for _ in range(n_l)]
    sender_recs: list[list[tuple[int, bytes]]] = [[] for _ in range(n_s)]
    counts = [0] * n_l

    def listener(j: int):
        rec = listener_recs[j]

        def on_text(rx: int, data: bytes) -> None:
            if data.startswith(sender_prefix):
                rec.append((rx, data))
                counts[j] += 1

        return on_text

    def sender(i: int):
        rec = sender_recs[i]
        own = b'{"name":"s%d","message":"' % i

        def on_text(rx: int, data: bytes) -> None:
            if data.startswith(own):
                rec.append((rx, data))

        return on_text

    specs = [(room, f"l{j}", listener(j), legit_ip(n_s + j)) for j in range(n_l)]
    specs += [(room, f"s{i}", sender(i), legit_ip(i)) for i in range(n_s)]
    sockets = await load.join_all(cfg, specs)
    if not all(s.named for s in sockets):
        raise RuntimeError("a legitimate client's name frame was refused")
    senders = sockets[n_l:]  # the listeners only receive
    conn.send({"ready": True})
    t0, t1, t2, t3 = await load.from_parent(conn)

    period = int(cfg["interval"] * 1e9)
    schedule = []
    for i in range(n_s):
        t = t0 + i * period // n_s
        while t < t3:
            schedule.append((t, i))
            t += period
    schedule.sort()
    late = 0
    for seq, (t, i) in enumerate(schedule):
        await sleep_until(t)
        tx = now_ns()
        if tx - t > 2_000_000:
            late += 1
        senders[i].send_text(f'{{"message":"{seq}:{tx}"}}')
    total = len(schedule)
    deadline = time.monotonic() + cfg["drain_timeout"]
    while min(counts, default=total) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    health = load.socket_health(sockets)
    await load.close_all(sockets)

    def phase_of(sent: int) -> str | None:
        return "quiet" if t1 <= sent < t2 else ("flood" if t2 <= sent < t3 else None)

    sent_in = Counter(phase_of(t) for t, _ in schedule)
    out: dict = {"late_sends": late, "sent_total": total, "health": health,
                 "sent": {k: sent_in.get(k, 0) for k in ("quiet", "flood")}}
    lat = {"quiet": array("q"), "flood": array("q")}
    second = {"quiet": array("q"), "flood": array("q")}
    first: dict[int, int] = {}
    first_phase: dict[int, str] = {}
    delivered = Counter()
    duplicates = 0
    for rec in listener_recs:
        seen = set()
        for rx, data in rec:
            seq_s, sent_s = json.loads(data)["message"].split(":")
            seq, sent = int(seq_s), int(sent_s)
            phase = phase_of(sent)
            if phase is None:
                continue
            if seq in seen:
                duplicates += 1
                continue
            seen.add(seq)
            value = rx - sent
            lat[phase].append(value)
            second[phase].append((sent - (t1 if phase == "quiet" else t2)) // 1_000_000_000)
            delivered[phase] += 1
            if value < first.get(seq, 1 << 62):
                first[seq], first_phase[seq] = value, phase
    echo = {"quiet": array("q"), "flood": array("q")}
    for rec in sender_recs:
        for rx, data in rec:
            sent = int(json.loads(data)["message"].split(":")[1])
            if (phase := phase_of(sent)) is not None:
                echo[phase].append(rx - sent)
    for phase in ("quiet", "flood"):
        firsts = array("q", [v for s, v in first.items() if first_phase[s] == phase])
        out[phase] = {
            "latency_ns": lat[phase].tobytes(), "second": second[phase].tobytes(),
            "echo_ns": echo[phase].tobytes(), "first_ns": firsts.tobytes(),
            "delivered": delivered[phase], "expected": out["sent"][phase] * n_l,
        }
    out["duplicates"] = duplicates
    return out


class Flooder:
    """One flooding socket: keeps `window` frames unanswered while running. Every frame gets
    exactly one reply: the refusal, another error frame, or the echo of its message."""

    def __init__(self, name: str, window: int) -> None:
        self.name = name
        self.window = window
        self.own = b'{"name":"%s","message":"' % name.encode()
        self.sock: load.Socket | None = None
        self.running = False
        self.sent = self.refused = self.errors = self.echoed = self.outstanding = 0

    def pump(self) -> None:
        sock = self.sock
        while self.running and self.outstanding < self.window and sock.open:
            sock.send_text('{"message":"flood"}')
            self.sent += 1
            self.outstanding += 1

    def on_text(self, rx: int, data: bytes) -> None:
        if not self.running and self.sent == 0:
            return  # before the flood: joins, broadcasts, its own name frame's reply
        if data == REFUSAL:
            self.refused += 1
        elif data.startswith(load.ERROR_PREFIX):
            self.errors += 1
        elif data.startswith(self.own):
            self.echoed += 1
        else:
            return  # someone else's broadcast
        self.outstanding -= 1
        self.pump()

    def counts(self) -> dict:
        return {"sent": self.sent, "refused": self.refused, "other_errors": self.errors,
                "allowed_echoed": self.echoed}


async def flood_role(cfg: dict, conn) -> dict:
    """Sockets from one IP that send frames as fast as the gateway answers them, from t2 to t3."""
    flooders = [Flooder(f"f{j}", cfg["flood_window"]) for j in range(cfg["flood_sockets"])]
    sockets = await load.join_all(cfg, [(cfg["room"], f.name, f.on_text, FLOOD_IP) for f in flooders])
    for f, sock in zip(flooders, sockets):
        f.sock = sock
    conn.send({"ready": True, "named": sum(s.named for s in sockets)})
    t0, t1, t2, t3 = await load.from_parent(conn)
    await sleep_until(t2)
    started = now_ns()
    for f in flooders:
        f.running = True
        f.pump()
    await sleep_until(t3)
    in_phase = [f.counts() for f in flooders]
    stopped = now_ns()
    for f in flooders:
        f.running = False
    deadline = time.monotonic() + cfg["drain_timeout"]
    while any(f.outstanding > 0 for f in flooders) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    health = load.socket_health([f.sock for f in flooders])
    await load.close_all([f.sock for f in flooders])
    total = {k: sum(c[k] for c in in_phase) for k in in_phase[0]}
    after = {k: sum(c[k] for c in (f.counts() for f in flooders)) for k in in_phase[0]}
    return {"in_phase": total, "with_drain": after, "seconds": (stopped - started) / 1e9,
            "unanswered": sum(max(0, f.outstanding) for f in flooders),
            "closed_early": health["closed_early"]}


ROLES = {"idle": idle_role, "legit": legit_role, "flood": flood_role}


def entry(role: str, cfg: dict, conn, parent: int) -> None:
    """Target of a spawned load process: run one role, talking to the parent over `conn`."""
    child_main(lambda: ROLES[role](cfg, conn), conn, parent)


# --- parent side --------------------------------------------------------------------------------


def spawn_role(role: str, cfg: dict) -> Child:
    return Child(entry, (role, cfg), f"limits-{role}")


@contextlib.contextmanager
def local_system(root: Path, name: str, args, extra_env: dict[str, str]):
    """A LocalSystem in root/name, stopped by PID on the way out (also when start fails)."""
    from services.localsystem import LocalSystem

    system = LocalSystem(root / name, partitions=args.partitions, extra_env=extra_env)
    try:
        system.start()
        yield system
        if not system.alive():
            raise RuntimeError(f"a service died during {name}; see {root / name}")
    except BaseException:
        with contextlib.suppress(OSError):
            sys.stderr.write(system.logs()[-6000:] + "\n")
        raise
    finally:
        uninterrupted([system.stop])


def pids_of(system) -> dict[str, int]:
    return {"gateway": system.gateway.pid, "ratelimit": system.ratelimit.pid,
            "room": system.rooms[0].pid, "nats": system.nats.process.pid,
            "projector": system.projector.pid}


def base_cfg(system, args) -> dict:
    return {
        "host": system.host, "port": system.port, "pids": pids_of(system),
        "compression": "deflate", "uvloop": True, "connect_concurrency": args.connect_concurrency,
        "open_timeout": 30.0, "barrier_timeout": 120.0, "drain_timeout": 10.0,
    }


def ms(values: array | list) -> dict:
    """Percentiles of nanosecond values, in ms."""
    return percentiles(values, 1e6)


# --- [1] limiter overhead -----------------------------------------------------------------------

CONFIGS = {
    "A": ("limiter off", {"DURACHAT_RATE_LIMIT": "false"}),
    "B": ("limiter on, out of reach",
          {"DURACHAT_RATE_LIMIT": "true", "DURACHAT_RATE_INTERVAL": "0.000001"}),
}


def part1(args, root: Path) -> dict:
    runs = []
    opts = SimpleNamespace(rate=args.rate, duration=args.duration, warmup=args.warmup,
                           latency_procs=1)
    for r in range(args.rounds):
        for label in "AB":
            title, env = CONFIGS[label]
            with local_system(root, f"p1-{r}-{label}", args, env) as system:
                busy = wait_quiet([system.gateway.pid], machine_limit=args.quiet_wait)
                run = chat_bench.latency_run(base_cfg(system, args), opts, args.listeners, "lat")
                if label == "B":
                    run["decision_ms"] = asyncio.run(decision_latency(system.nats.url, 2000))
            run |= {"config": label, "round": r + 1, "machine_busy_before": round(busy, 1)}
            runs.append(run)
            lat = run["latency_ms"]
            print(f"    round {r + 1} {label} ({title}): p50 {lat['p50']:.2f} ms, p99 "
                  f"{lat['p99']:.2f} ms, lost {run['lost']}, error frames {run['error_frames']}",
                  flush=True)
    diffs = []
    for r in range(args.rounds):
        a = next(x for x in runs if x["round"] == r + 1 and x["config"] == "A")
        b = next(x for x in runs if x["round"] == r + 1 and x["config"] == "B")
        diffs.append({k: b["latency_ms"][k] - a["latency_ms"][k] for k in ("p50", "p99")}
                     | {"echo_p50": b["sender_echo_ms"]["p50"] - a["sender_echo_ms"]["p50"]})
    mean = {k: sum(d[k] for d in diffs) / len(diffs) for k in diffs[0]}
    return {"runs": runs, "differences": diffs, "mean_difference": mean,
            "ok": mean["p99"] <= TARGET_ADDED_P99_MS}


async def decision_latency(nats_url: str, n: int) -> dict:
    """The limiter's decision alone: `n` sequential TakeToken requests from this process to
    the ratelimit service (over 50 keys), as the gateway sends them; round trips in ms."""
    import nats

    from contracts.ratelimit import LimiterClient, RateDecision, TakeToken

    nc = await nats.connect(nats_url, name="durachat-limits-bench")
    try:
        limiters = LimiterClient(nc, timeout=2.0)
        rtt = array("q")
        refused = 0
        for i in range(n):
            t = now_ns()
            decision = await limiters.send_once(f"198.51.100.{i % 50}", TakeToken(), 2.0)
            rtt.append(now_ns() - t)
            assert isinstance(decision, RateDecision), decision
            refused += not decision.allowed
    finally:
        await nc.drain()
    warm = n // 10  # the first requests create the limiter objects
    return ms(rtt[warm:]) | {"refused": refused}


def print_part1(p: dict, args) -> None:
    print(f"\n[1] Limiter overhead: 1 sender at {args.rate:g} msg/s, {args.listeners} listeners, "
          f"{args.duration:g} s (after {args.warmup:g} s warm-up) per run, each run its own "
          "system; latency = sender frame out -> listener frame in")
    print("    A = DURACHAT_RATE_LIMIT=false; B = limiter on, DURACHAT_RATE_INTERVAL=0.000001 "
          "(every frame asks the ratelimit service, none is refused)")
    header = ["run", "p50 ms", "p99 ms", "max ms", "echo p50/p99 ms", "delivered/expected",
              "errors", "CPU % gateway/ratelimit/room/nats/load", "other %"]
    rows = []
    for run in p["runs"]:
        lat, echo, cpu = run["latency_ms"], run["sender_echo_ms"], run["cpu_percent"]
        rows.append([
            f"{run['round']}{run['config']}", f"{lat['p50']:.2f}", f"{lat['p99']:.2f}",
            f"{lat['max']:.2f}", fmt_stats(echo),
            f"{run['delivered']:,}/{run['expected']:,}", str(run["error_frames"]),
            " / ".join(f"{cpu.get(k, 0):.0f}" for k in ("gateway", "ratelimit", "room", "nats", "load")),
            f"{others(cpu):.0f}",
        ])
    print(table(rows, header))
    for r, d in enumerate(p["differences"]):
        print(f"    round {r + 1}: B - A  p50 {d['p50']:+.2f} ms  p99 {d['p99']:+.2f} ms  "
              f"(sender echo p50 {d['echo_p50']:+.2f} ms)")
    for run in p["runs"]:
        if d := run.get("decision_ms"):
            print(f"    round {run['round']} B, the decision alone ({d['n']:,} sequential TakeToken "
                  f"round trips from the bench to the ratelimit service after the run): p50 "
                  f"{d['p50']:.3f} ms, p99 {d['p99']:.3f} ms, max {d['max']:.2f} ms")
    m = p["mean_difference"]
    print(f"    mean over rounds: p50 added {m['p50']:+.2f} ms, p99 added {m['p99']:+.2f} ms "
          f"(target <= {TARGET_ADDED_P99_MS:g} ms: {verdict(p['ok'])})")


# --- [2] fairness under a flood -----------------------------------------------------------------


def part2(args, root: Path) -> dict:
    env = {"DURACHAT_RATE_LIMIT": "true", "DURACHAT_RATE_INTERVAL": "5",
           "DURACHAT_RATE_GRACE": "20"}
    roles: list[Child] = []
    profiler: Profiler | None = None
    with local_system(root, "p2", args, env) as system:
        try:
            # the roles' sockets offer no compression; some name frames are refused on purpose
            base = base_cfg(system, args) | {"compression": "none", "refused_ok": True}
            pids = base["pids"]
            wait_quiet([pids["gateway"]])
            idle = spawn_role("idle", base | {"idle_ips": args.idle_ips, "idle_per_ip": args.idle_per_ip,
                                        "idle_rooms": args.idle_rooms})
            roles.append(idle)
            idle_info = idle.receive(300)
            print(f"    {idle_info['open']:,} idle sockets open in {idle_info['open_seconds']} s "
                  f"({idle_info['named']:,} named; the rest had their name frame refused by "
                  "their IP's limit and stay open, unnamed)", flush=True)
            legit = spawn_role("legit", base | {"room": "legit", "senders": args.legit_senders,
                                          "listeners": args.legit_listeners,
                                          "interval": args.legit_interval})
            roles.append(legit)
            legit.receive(300)
            flood = spawn_role("flood", base | {"room": "legit", "flood_sockets": args.flood_sockets,
                                          "flood_window": args.flood_window})
            roles.append(flood)
            flood_info = flood.receive(120)
            busy = wait_quiet([pids["gateway"]], machine_limit=args.quiet_wait)
            all_pids = pids | {"legit_load": legit.pid, "flood_load": flood.pid,
                               "idle_load": idle.pid}
            t0 = now_ns() + 300_000_000
            t1 = t0 + int(args.settle * 1e9)
            t2 = t1 + int(args.phase * 1e9)
            t3 = t2 + int(args.phase * 1e9)
            legit.send((t0, t1, t2, t3))
            flood.send((t0, t1, t2, t3))
            samples = []
            for t in (t1, t2, t3):
                time.sleep(max(0.0, (t - now_ns()) / 1e9))
                samples.append(cpu_sample(all_pids))
                if t == t2 and args.profile:
                    profiler = Profiler.start(pids["gateway"], args.profile, args.phase)
            results = legit.receive(60 + args.legit_interval)
            flood_result = flood.receive(60)
            idle.send("stop")
            idle_end = idle.receive(60)
        finally:
            if profiler is not None:
                profiler.stop()
            for role in roles:
                role.stop()
    out = {
        "config": {"legit_senders": args.legit_senders, "legit_listeners": args.legit_listeners,
                   "legit_interval_s": args.legit_interval, "phase_s": args.phase,
                   "idle_ips": args.idle_ips, "idle_per_ip": args.idle_per_ip,
                   "flood_sockets": args.flood_sockets, "flood_window": args.flood_window},
        "machine_busy_before": round(busy, 1), "idle": idle_info | idle_end, "flood_named": flood_info["named"],
        "legit_health": results["health"], "late_sends": results["late_sends"],
        "duplicates": results["duplicates"], "flooder": flood_result,
    }
    walls = [(t2 - t1) / 1e9, (t3 - t2) / 1e9]
    for index, phase in enumerate(("quiet", "flood")):
        r = results[phase]
        lat = ns(r["latency_ns"])
        by_second: dict[int, list[int]] = {}
        for s, v in zip(ns(r["second"]), lat):
            by_second.setdefault(s, []).append(v)
        out[phase] = {
            "latency_ms": ms(lat), "first_listener_ms": ms(ns(r["first_ns"])),
            "sender_echo_ms": ms(ns(r["echo_ns"])),
            "sent": results["sent"][phase], "msg_per_s": results["sent"][phase] / walls[index],
            "delivered": r["delivered"], "expected": r["expected"],
            "per_second_p99_ms": [ms(by_second[s])["p99"] for s in sorted(by_second)],
            "cpu_percent": cpu_percent(samples[index], samples[index + 1], walls[index]),
        }
    q, f = out["quiet"]["latency_ms"], out["flood"]["latency_ms"]
    out["p99_ratio"] = f["p99"] / q["p99"] if q["p99"] and f["p99"] else None
    out["p50_ratio"] = f["p50"] / q["p50"] if q["p50"] and f["p50"] else None
    out["ok"] = out["p99_ratio"] is not None and out["p99_ratio"] <= TARGET_FLOOD_RATIO
    if args.profile:
        out["profile"] = {"path": str(args.profile), "top": profile_top(args.profile)}
    return out


def print_part2(p: dict, args) -> None:
    c = p["config"]
    rate = c["legit_senders"] / c["legit_interval_s"]
    print(f"\n[2] Fairness under a flood: limits 5 s / 20 s; {p['idle']['open']:,} idle sockets "
          f"from {c['idle_ips']} IPs; {c['legit_senders']} legitimate senders (one IP each, a "
          f"message every {c['legit_interval_s']:g} s, {rate:.1f} msg/s) and "
          f"{c['legit_listeners']} listeners (one IP each) in one room; two phases of "
          f"{c['phase_s']:g} s; flood: {c['flood_sockets']} socket(s) from {FLOOD_IP}, "
          f"{c['flood_window']} frames in flight each")
    q, f = p["quiet"], p["flood"]

    def both(fn):
        return [fn(q), fn(f)]

    fl = p["flooder"]
    fin = fl["in_phase"]
    rows = [
        ["legit latency p50 (ms)", *both(lambda x: f"{x['latency_ms']['p50']:.2f}"),
         f"{p['p50_ratio']:.3f}x" if p["p50_ratio"] else "-", ""],
        ["legit latency p99 (ms)", *both(lambda x: f"{x['latency_ms']['p99']:.2f}"),
         f"{p['p99_ratio']:.3f}x" if p["p99_ratio"] else "-",
         f"<= {TARGET_FLOOD_RATIO:g}x {verdict(p['ok'])}"],
        ["legit latency max (ms)", *both(lambda x: f"{x['latency_ms']['max']:.2f}"), "", ""],
        ["first listener p50 / p99 (ms)", *both(lambda x: fmt_stats(x["first_listener_ms"])), "", ""],
        ["sender echo p50 / p99 (ms)", *both(lambda x: fmt_stats(x["sender_echo_ms"])), "", ""],
        ["legit messages sent (msg/s)", *both(lambda x: f"{x['sent']:,} ({x['msg_per_s']:.1f})"),
         "", ""],
        ["delivered / expected (listener pairs)",
         *both(lambda x: f"{x['delivered']:,} / {x['expected']:,}"), "", ""],
        ["flooder frames sent (frames/s)", "0",
         f"{fin['sent']:,} ({fin['sent'] / fl['seconds']:,.0f})", "", ""],
        ["flooder refusals / let through (posted)", "-",
         f"{fin['refused']:,} / {fin['other_errors'] + fin['allowed_echoed']:,} "
         f"({fin['allowed_echoed']:,})", "", ""],
    ]
    ours = ("gateway", "ratelimit", "room", "nats", "projector", "legit_load", "flood_load",
            "idle_load")
    for x in (q, f):
        x["cpu_percent"]["other_processes"] = round(others(x["cpu_percent"]), 1)
    for name in (*ours, "other_processes", "machine"):
        label = f"CPU {name} (% of one core)" if name != "machine" else \
            f"CPU whole machine (% of {100 * (os.cpu_count() or 1)})"
        rows.append([label, *both(lambda x, name=name: f"{x['cpu_percent'].get(name, 0):.0f}"), "", ""])
    print(table(rows, ["", "no flood", "flood", "ratio", "target"]))
    for phase in ("quiet", "flood"):
        series = " ".join(f"{v:.1f}" for v in p[phase]["per_second_p99_ms"])
        print(f"    legit p99 by second, {'no flood' if phase == 'quiet' else 'flood'} (ms): {series}")
    h = p["legit_health"]
    print(f"    legit clients: {h['error_frames']} error frames (refusals), {h['closed_early']} "
          f"closed early, {p['late_sends']} sends > 2 ms late; flooder after drain: "
          f"{fl['with_drain']['refused']:,} refusals of {fl['with_drain']['sent']:,} frames, "
          f"{fl['unanswered']} unanswered, {fl['closed_early']} sockets closed early; "
          f"{p['idle']['open_at_end']:,} idle sockets still open at the end")
    if h["first_error"]:
        print(f"    first legit error frame: {h['first_error']}")
    prof = p.get("profile")
    if prof and prof.get("top"):
        top = prof["top"]
        print(f"    gateway profile during the flood ({top['samples']:,} samples, {prof['path']}):")
        print("      own:       " + "; ".join(f"{k} {v}%" for k, v in top["own"][:8]))
        print("      inclusive: " + "; ".join(f"{k} {v}%" for k, v in top["inclusive"][:8]))


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench import limits_bench as this  # spawned processes import entry() by this name

    raise_fd_limit(args.idle_ips * args.idle_per_ip * 2 + 4096)
    targets = {"added_p99_ms": TARGET_ADDED_P99_MS, "flood_p99_ratio": TARGET_FLOOD_RATIO}
    with BenchRun(args, "durachat-limits-", targets) as run:
        print(f"durachat limits benchmark: {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}; machine {run.busy:.0f}% busy before start; "
              f"dir {run.tmp}", flush=True)
        if "1" in args.parts:
            print("\n[1] limiter overhead: running A B" + " A B" * (args.rounds - 1), flush=True)
            run.report["overhead"] = part1(args, run.tmp)
            print_part1(run.report["overhead"], args)
        if "2" in args.parts:
            print("\n[2] fairness under a flood: starting", flush=True)
            run.report["flood"] = this.part2(args, run.tmp)
            print_part2(run.report["flood"], args)
    return run.status


if __name__ == "__main__":
    sys.exit(main())
