"""durachat benchmark: latency of fan-out, throughput into one room, memory per idle socket.

    python -m bench.chat_bench            # the default run (~70 s)
    python -m bench.chat_bench --quick    # a short smoke run
    python -m bench.chat_bench --json out.json

Starts a LocalSystem (nats-server, room service, gateway as processes on free ports, in a
temp dir), runs each load phase in separate spawned processes (bench/load.py) so that the
load generator never shares the gateway's CPU, prints a table, and stops every process it
started, by PID, at the end, on error and on Ctrl-C. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import secrets
import sys
from array import array

from bench import load
from bench.load import ns
from bench.measure import (
    BenchRun,
    Child,
    arguments,
    fmt,
    fmt_stats,
    others,
    percentiles,
    raise_fd_limit,
    receive_all,
    table,
    verdict,
    wait_quiet,
)

TARGET_P50_MS = 3.0
TARGET_P99_MS = 15.0
TARGET_MSG_S = 2000.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = arguments("bench.chat_bench", __doc__,
                  quick="smoke run: 2 s phases, 0.5 s warm-up, 200 idle sockets")
    p.add_argument("--phases", default="memory,latency,throughput",
                   help="comma-separated subset of memory,latency,throughput")
    p.add_argument("--duration", type=float, help="seconds measured per phase (default 10, quick 2)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up before measuring (default 1, quick 0.5)")
    g = p.add_argument_group("latency")
    g.add_argument("--rate", type=float, default=200.0, help="messages/s sent by the one sender")
    g.add_argument("--listeners", type=int, default=100, help="listener sockets in the room")
    g.add_argument("--baseline-listeners", type=int, default=1,
                   help="listeners of the baseline run (0: no baseline)")
    g.add_argument("--latency-procs", type=int, default=1,
                   help="load processes the listeners are split over (the sender is in the first)")
    g = p.add_argument_group("throughput")
    g.add_argument("--senders", type=int, default=16, help="sender sockets into one room")
    g.add_argument("--window", type=int, default=2,
                   help="messages a sender keeps unechoed (1 = strict closed loop)")
    g.add_argument("--throughput-procs", type=int, default=1, help="load processes for the senders")
    g = p.add_argument_group("memory")
    g.add_argument("--idle-sockets", type=int, help="idle named sockets (default 1000, quick 200)")
    g.add_argument("--idle-rooms", type=int, default=10, help="rooms the idle sockets are spread over")
    g = p.add_argument_group("system")
    g.add_argument("--compression", choices=["deflate", "none"], default="deflate",
                   help="offer permessage-deflate as browsers and websockets.connect do, or not")
    g.add_argument("--partitions", type=int, default=16)
    g.add_argument("--no-uvloop", action="store_true", help="plain asyncio loop in the load processes")
    g.add_argument("--connect-concurrency", type=int, default=32, help="socket opens in flight")
    args = p.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (2.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    if args.idle_sockets is None:
        args.idle_sockets = 200 if args.quick else 1000
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    unknown = set(args.phases) - {"memory", "latency", "throughput"}
    if unknown:
        p.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    return args


# --- running load processes ---------------------------------------------------------------------


def run_load(kind: str, cfg: dict, procs: int, timeout: float) -> list[dict]:
    """Run phase `kind` in `procs` spawned processes; their result dicts, by index."""
    barrier = mp.get_context("spawn").Barrier(procs) if procs > 1 else None
    children: list[Child] = []
    finished = False
    try:
        for index in range(procs):
            children.append(Child(load.entry, (kind, cfg, index, procs, barrier),
                                  f"bench-{kind}-{index}"))
        results = receive_all(children, timeout)
        finished = True
        return results
    finally:
        for child in children:
            child.stop(5 if finished else 0.5)


# --- phases ---------------------------------------------------------------------------------------


def latency_run(base: dict, args, listeners: int, room: str) -> dict:
    procs = max(1, min(args.latency_procs, listeners))
    cfg = base | {
        "room": room, "listeners": listeners, "rate": args.rate,
        "duration": args.duration, "warmup": args.warmup,
    }
    results = run_load("latency", cfg, procs, timeout=args.duration + args.warmup + 120)
    head = results[0]
    lat = array("q")
    by_second: dict[int, list[int]] = {}
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for r in results:
        values = ns(r["latency_ns"])
        lat.extend(values)
        for seq, value in zip(ns(r["seq"]), values):
            by_second.setdefault(int(seq // args.rate), []).append(value)
            if value < first.get(seq, 1 << 62):
                first[seq] = value
            if value > last.get(seq, -1):
                last[seq] = value
    expected = head["sent"] * listeners
    delivered = sum(r["delivered"] for r in results)
    # process 0 measured itself over the send window; the others over barrier-to-end
    load_cpu = head["server_cpu"]["load"] + sum(r["load_cpu"] for r in results[1:])
    health = [r["health"] for r in results]
    # Why deliveries are short of sent x listeners: messages the room never took (refused at
    # the gateway: error frames to the sender), or taken and not delivered to a listener.
    echoed = set(head.get("echoed", ()))
    lost_accepted = sum(len(echoed - set(seen)) for r in results for seen in r.get("seen", ()))
    error_kinds: dict[str, int] = {}
    for h in health:
        for kind, n in h.get("error_kinds", {}).items():
            error_kinds[kind] = error_kinds.get(kind, 0) + n
    return {
        "listeners": listeners,
        "load_processes": procs,
        "sent": head["sent"],
        "send_rate": head["send_rate"],
        "late_sends": head["late_sends"],
        "expected": expected,
        "delivered": delivered,
        "lost": expected - delivered,
        "not_accepted": head.get("not_accepted", 0),
        "not_accepted_deliveries": head.get("not_accepted", 0) * listeners,
        "lost_accepted": lost_accepted,
        "late": sum(r.get("late", 0) for r in results),
        "listeners_not_drained": sum(r["listeners"] for r in results) + 1
                                 - sum(r.get("ended", 0) + r.get("ended_late", 0) for r in results),
        "duplicates": sum(r["duplicates"] for r in results),
        "latency_ms": percentiles(lat, 1e6),
        "sender_echo_ms": percentiles(ns(head["echo_ns"]), 1e6),
        # per message: its first and its last listener (last - first = the fan-out's spread)
        "first_listener_ms": percentiles(list(first.values()), 1e6),
        "last_listener_ms": percentiles(list(last.values()), 1e6),
        "spread_ms": percentiles([last[s] - first[s] for s in first], 1e6),
        # by second of the run (of the send time): does a queue build up?
        "per_second_ms": [percentiles(by_second[s], 1e6) for s in sorted(by_second)],
        # measured message frames (listeners' and the sender's echo) per second of the window
        "frames_per_s_into_load": (delivered + head["sent"]) / args.duration,
        "cpu_percent": head["server_cpu"] | {"load": load_cpu},
        "error_frames": sum(h["error_frames"] for h in health),
        "error_kinds": error_kinds,
        "first_error": next((h["first_error"] for h in health if h["first_error"]), None),
        "closed_early": sum(h["closed_early"] for h in health),
        "deflate": all(h["deflate"] for h in health),
    }


def throughput_run(base: dict, args, room: str, nats_url: str) -> dict:
    procs = max(1, min(args.throughput_procs, args.senders))
    cfg = base | {
        "room": room, "senders": args.senders, "window": args.window,
        "duration": args.duration, "warmup": args.warmup,
    }
    results = run_load("throughput", cfg, procs, timeout=args.duration + args.warmup + 120)
    window_s = results[0]["window_s"]
    acked_in_window = sum(r["acked_in_window"] for r in results)
    acked = sum(r["acked"] for r in results)
    sent = sum(r["sent"] for r in results)
    lat = array("q")
    for r in results:
        lat.extend(ns(r["echo_ns"]))
    stored = asyncio.run(stored_counts(nats_url, room))
    health = [r["health"] for r in results]
    return {
        "senders": args.senders,
        "window": args.window,
        "load_processes": procs,
        "acked_per_s": acked_in_window / window_s,
        "acked_in_window": acked_in_window,
        "sent_total": sent,
        "acked_total": acked,
        "unechoed": sum(r["unechoed"] for r in results),
        "stalled_senders": sum(r["stalled_senders"] for r in results),
        "echo_latency_ms": percentiles(lat, 1e6),
        "frames_per_s_into_load": acked_in_window * args.senders / window_s,
        "cpu_percent": results[0]["cpu"] | {
            "load": sum(r["cpu"].get("load", 0.0) for r in results)
        },
        "stored": stored,
        "durable": stored["messages"] >= acked,
        "error_frames": sum(h["error_frames"] for h in health),
        "first_error": next((h["first_error"] for h in health if h["first_error"]), None),
        "closed_early": sum(h["closed_early"] for h in health),
    }


async def stored_counts(nats_url: str, room: str) -> dict:
    """What JetStream holds for `room`: commits, events, MessagePosted events."""
    import nats

    from services.runtime.eventstore import ObjectEventStore

    nc = await nats.connect(nats_url, name="durachat-bench")
    try:
        commits = await ObjectEventStore(nc, "room").read(room)
    finally:
        await nc.drain()
    events = sum(len(c.events) for c in commits)
    per_commit = [sum(1 for e in c.events if type(e).__name__ == "MessagePosted") for c in commits]
    with_messages = [n for n in per_commit if n]
    return {
        "commits": len(commits),
        "events": events,
        "messages": sum(per_commit),
        "events_per_commit": events / len(commits) if commits else 0.0,
        "commits_with_messages": len(with_messages),
        "messages_per_commit": sum(with_messages) / len(with_messages) if with_messages else 0.0,
        "max_messages_per_commit": max(with_messages, default=0),
    }


def memory_run(base: dict, args, room: str) -> dict:
    cfg = base | {"room": room, "sockets": args.idle_sockets, "rooms": args.idle_rooms}
    r = run_load("memory", cfg, 1, timeout=180)[0]
    delta = r["rss_after_kib"]["gateway"] - r["rss_before_kib"]["gateway"]
    room_delta = None
    if r["rss_before_kib"]["room"] is not None:
        room_delta = r["rss_after_kib"]["room"] - r["rss_before_kib"]["room"]
    return r | {
        "gateway_kib_per_socket": delta / r["sockets"],
        "room_service_kib_per_socket": room_delta / r["sockets"] if room_delta is not None else None,
    }


# --- output ---------------------------------------------------------------------------------------


def cpu_text(cpu: dict) -> str:
    order = ["gateway", "room", "nats", "load"]
    text = "  ".join(f"{k} {cpu[k]:.0f}%" for k in order if k in cpu)
    if "machine" in cpu:
        text += (f"  (machine {cpu['machine']:.0f}% of {100 * (os.cpu_count() or 1)}%, "
                 f"other processes {others(cpu):.0f}%)")
    return text


def print_latency(runs: list[dict], args) -> None:
    procs = runs[-1]["load_processes"]
    print(f"\n[1] Latency: 1 sender at {args.rate:.0f} msg/s for {args.duration:g} s "
          f"(after {args.warmup:g} s warm-up); send frame out -> listener frame in")
    if procs > 1:
        print(f"    listeners split over {procs} load processes, all timestamping with "
              "CLOCK_MONOTONIC (time.monotonic_ns, one clock per machine)")
    else:
        print("    all sockets in one load process (time.monotonic_ns)")
    header = ["", *[f"{r['listeners']} listener(s)" for r in runs]]
    if len(runs) == 2:
        header += ["ratio"]
    header += ["target"]
    last = runs[-1]
    def row(label, key, target=None, ok=None):
        vals = [r["latency_ms"][key] for r in runs]
        cells = [label, *[fmt(v) for v in vals]]
        if len(runs) == 2:
            cells.append(f"{vals[1] / vals[0]:.1f}x" if vals[0] and vals[1] else "-")
        cells.append(f"{target} {verdict(ok)}".strip() if target else "")
        return cells
    p50, p99 = last["latency_ms"]["p50"], last["latency_ms"]["p99"]
    rows = [
        row("p50 latency (ms)", "p50", f"<= {TARGET_P50_MS:g}", p50 is not None and p50 <= TARGET_P50_MS),
        row("p99 latency (ms)", "p99", f"<= {TARGET_P99_MS:g}", p99 is not None and p99 <= TARGET_P99_MS),
        row("max latency (ms)", "max"),
    ]
    extra = [
        ("delivered / expected", lambda r: f"{r['delivered']:,} / {r['expected']:,}"),
        ("lost frames", lambda r: fmt(r["lost"])),
        ("achieved send rate (msg/s)", lambda r: fmt(r["send_rate"], 1)),
        ("first listener p50 / p99 (ms)", lambda r: fmt_stats(r["first_listener_ms"])),
        ("last listener p50 / p99 (ms)", lambda r: fmt_stats(r["last_listener_ms"])),
        ("sender echo p50 / p99 (ms)", lambda r: fmt_stats(r["sender_echo_ms"])),
        ("frames/s read by load", lambda r: fmt(r["frames_per_s_into_load"], 0)),
        ("fan-out spread last-first p50 / p99 (ms)", lambda r: fmt_stats(r["spread_ms"])),
        ("error frames / closed early", lambda r: f"{r['error_frames']} / {r['closed_early']}"),
    ]
    for label, f in extra:
        cells = [label, *[f(r) for r in runs]]
        if len(runs) == 2:
            cells.append("")
        cells.append("")
        rows.append(cells)
    print(table(rows, header))
    for r in runs:
        print(f"    CPU during the window, {r['listeners']} listener(s), % of one core: "
              f"{cpu_text(r['cpu_percent'])}")
    for r in runs:
        series = " ".join(fmt(x["p50"], 1) for x in r["per_second_ms"])
        print(f"    p50 by second of the run, {r['listeners']} listener(s) (ms): {series}")
    for r in runs:
        seconds = r["per_second_ms"]
        first, last = r["first_listener_ms"]["p50"], r["spread_ms"]["p50"]
        if first is not None and len(seconds) >= 2 and r["latency_ms"]["p50"] > TARGET_P50_MS \
                and first > 2 * max(last, 0.5):
            print(f"    note ({r['listeners']} listeners): most of the latency comes before the "
                  f"fan-out (first listener p50 {first:.1f} ms vs spread {last:.1f} ms): the "
                  "sender's frames queued in the gateway, which handles one frame per socket "
                  "at a time")
    for r in runs:
        if r["first_error"]:
            print(f"    first error frame ({r['listeners']} listeners): {r['first_error']}")


def print_throughput(t: dict, args) -> None:
    s = t["stored"]
    print(f"\n[2] Throughput into one room: {t['senders']} senders, each keeping up to "
          f"{t['window']} message(s) unechoed, {args.duration:g} s (after {args.warmup:g} s warm-up)")
    ok = t["acked_per_s"] >= TARGET_MSG_S
    rows = [
        ["acknowledged (echoed) msg/s", fmt(t["acked_per_s"], 0), f">= {TARGET_MSG_S:g} {verdict(ok)}"],
        ["echo latency p50 / p99 / max (ms)", fmt_stats(t["echo_latency_ms"], "p50", "p99", "max"),
         ""],
        ["sent / acknowledged (whole run)", f"{t['sent_total']:,} / {t['acked_total']:,}", ""],
        ["stored MessagePosted in JetStream", fmt(s["messages"]),
         f">= acknowledged {verdict(t['durable'])}"],
        ["commits (JetStream messages)", fmt(s["commits"]), ""],
        ["events per commit (all events)", fmt(s["events_per_commit"]), ""],
        ["messages per commit (commits with messages; max)",
         f"{fmt(s['messages_per_commit'])} (max {s['max_messages_per_commit']})", ""],
        ["frames/s read by load (fan-out to senders)", fmt(t["frames_per_s_into_load"], 0), ""],
        ["error frames / closed early / stalled senders",
         f"{t['error_frames']} / {t['closed_early']} / {t['stalled_senders']}", ""],
        ["CPU (% of one core)", cpu_text(t["cpu_percent"]), ""],
    ]
    print(table(rows, ["", "value", "target"]))
    if t["first_error"]:
        print(f"    first error frame: {t['first_error']}")


def print_memory(m: dict) -> None:
    print(f"\n[3] Memory per idle socket: {m['sockets']:,} named sockets over {m['rooms']} rooms")
    before, after = m["rss_before_kib"], m["rss_after_kib"]
    rows = [
        ["gateway RSS before / after (KiB)", f"{before['gateway']:,} / {after['gateway']:,}"],
        ["gateway KiB per idle socket", fmt(m["gateway_kib_per_socket"], 1)],
        ["gateway RSS after closing them (KiB)", fmt(m["rss_after_close_kib"])],
        ["room service KiB per socket (members)", fmt(m["room_service_kib_per_socket"], 2)],
        ["time to open / close all (s)", f"{m['open_seconds']:.2f} / {m['close_seconds']:.2f}"],
        ["error frames / closed early",
         f"{m['health']['error_frames']} / {m['health']['closed_early']}"],
    ]
    print(table(rows, ["", "value"]))


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from services.localsystem import LocalSystem

    raise_fd_limit(args.idle_sockets * 2 + 4096)
    targets = {"latency_p50_ms": TARGET_P50_MS, "latency_p99_ms": TARGET_P99_MS,
               "throughput_msg_s": TARGET_MSG_S}
    with BenchRun(args, "durachat-bench-", targets) as run:
        report = run.report
        # All load comes from 127.0.0.1: keep the per-IP limits (bench/limits_bench measures
        # them) out of reach, while every frame still asks the limiter, as in production.
        system = LocalSystem(
            run.tmp,
            partitions=args.partitions,
            extra_env={"DURACHAT_RATE_INTERVAL": "0.000001", "DURACHAT_MAX_SOCKETS_PER_IP": "100000"},
        )
        run.on_exit(system.stop, logs=system.logs)
        prefix = f"b{secrets.token_hex(3)}"
        system.start()
        pids = {"gateway": system.gateway.pid, "room": system.rooms[0].pid,
                "nats": system.nats.process.pid}
        base = {
            "host": system.host, "port": system.port, "pids": pids,
            "compression": args.compression, "uvloop": not args.no_uvloop,
            "connect_concurrency": args.connect_concurrency, "open_timeout": 30.0,
            "barrier_timeout": 120.0, "drain_timeout": 10.0,
        }
        print(f"durachat chat benchmark: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"client compression={'permessage-deflate' if args.compression == 'deflate' else 'none'}, "
              f"load loop={'asyncio' if args.no_uvloop else 'uvloop'}")
        print(f"system: gateway pid {pids['gateway']} on {system.base_url}, room pid {pids['room']}, "
              f"nats-server pid {pids['nats']} on {system.nats.url}; dir {run.tmp}", flush=True)
        wait_quiet([pids["gateway"]])

        if "memory" in args.phases:
            report["memory"] = memory_run(base, args, f"{prefix}-mem")
            print_memory(report["memory"])
            wait_quiet([pids["gateway"]])
        if "latency" in args.phases:
            runs = []
            if args.baseline_listeners > 0:
                runs.append(latency_run(base, args, args.baseline_listeners, f"{prefix}-lat-base"))
                wait_quiet([pids["gateway"]])
            runs.append(latency_run(base, args, args.listeners, f"{prefix}-lat"))
            report["latency"] = {"baseline": runs[0] if len(runs) == 2 else None, "main": runs[-1]}
            print_latency(runs, args)
            wait_quiet([pids["gateway"]])
        if "throughput" in args.phases:
            report["throughput"] = throughput_run(base, args, f"{prefix}-tput", system.nats.url)
            print_throughput(report["throughput"], args)
        if not system.alive():
            raise RuntimeError("a service died during the benchmark")
    return run.status


if __name__ == "__main__":
    sys.exit(main())
