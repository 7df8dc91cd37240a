"""durachat benchmark: what observability costs on the chat path, A/B in one command.

    python -m bench.observe_bench            # 3 modes x 2 rounds, ~2 min
    python -m bench.observe_bench --quick    # 3 modes x 1 round, short phases
    python -m bench.observe_bench --json out.json

Modes, each on a fresh LocalSystem (processes on free ports, temp dir), in alternating
rounds (A B C A B C) so that drift in the machine's load spreads over all of them:

- off:     DURACHAT_METRICS=off (every metric a no-op), no tracing;
- metrics: the default (prometheus-client metrics recorded; /metrics served);
- traces:  metrics + traces, every process exporting OTLP/HTTP to a collector in this
           process (bench/otlp_sink.py), with the SDK's batch processor.

Each run is chat_bench's latency phase: one sender at --rate messages/s into a room with
--listeners sockets, end-to-end latency per delivered frame, and the CPU of the gateway,
room, ratelimit and projector processes per message sent (core-µs per message).
"""

from __future__ import annotations

import os
import platform
import secrets
import sys

from bench import chat_bench
from bench.measure import BenchRun, arguments, fmt, table, wait_quiet
from bench.otlp_sink import OtlpSink

MODES = ("off", "metrics", "traces", "sampled")
DEFAULT_MODES = ("off", "metrics", "traces")
SAMPLE_RATIO = "0.1"  # mode "sampled": parentbased_traceidratio, one trace in ten
SERVICES = ("gateway", "room", "ratelimit", "projector")
TARGET_CPU_OVERHEAD = 0.05  # metrics: at most 5% more CPU per message than off


def parse_args(argv: list[str] | None):
    p = arguments("bench.observe_bench", __doc__, quick="one round, 3 s phases")
    p.add_argument("--rounds", type=int, help="rounds of the three modes (default 2, quick 1)")
    p.add_argument("--duration", type=float, help="seconds measured per run (default 8, quick 3)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up (default 1, quick 0.5)")
    p.add_argument("--rate", type=float, default=200.0, help="messages/s sent by the one sender")
    p.add_argument("--listeners", type=int, default=20, help="listener sockets in the room")
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--modes", default=",".join(DEFAULT_MODES),
                   help="comma-separated subset of off,metrics,traces,sampled")
    p.add_argument("--trace-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment of the traces/sampled modes (e.g. OTEL_BSP_* settings)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.duration = args.duration or (3.0 if args.quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    args.modes = [m for m in args.modes.split(",") if m]
    if unknown := set(args.modes) - set(MODES):
        p.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    # what chat_bench.latency_run reads
    args.latency_procs = 1
    return args


def mode_env(mode: str, sink: OtlpSink, trace_env: list[str] | None = None) -> dict[str, str]:
    env = {"DURACHAT_RATE_INTERVAL": "0.000001", "DURACHAT_MAX_SOCKETS_PER_IP": "100000"}
    if mode == "off":
        env["DURACHAT_METRICS"] = "off"
    if mode in ("traces", "sampled"):
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
        for item in trace_env or ():
            name, _, value = item.partition("=")
            env[name] = value
    if mode == "sampled":
        env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        env["OTEL_TRACES_SAMPLER_ARG"] = SAMPLE_RATIO
    return env


def charge_round_trips(url: str) -> dict | None:
    """The gateway's limiter charges so far: count, and how many took over 5 ms (the sender's
    period at 200 msg/s: a frame arriving while its predecessor's charge is in flight is
    refused by the demo gate). None when metrics are off."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return None
    found: dict = {}
    for family in text_string_to_metric_families(text):
        if family.name == "durachat_ratelimit_charge_seconds":
            buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
            total = buckets.get("+Inf", 0.0)
            if total:
                found |= {"charges": int(total), "over_5ms": int(total - buckets["0.005"]),
                          "over_10ms": int(total - buckets["0.01"])}
        if family.name == "durachat_ratelimit_refusals":
            found["refusals"] = {s.labels["source"]: int(s.value) for s in family.samples
                                 if s.name.endswith("_total")}
    return found or None


def one_run(run: BenchRun, args, mode: str, sink: OtlpSink, index: int) -> dict:
    from services.localsystem import LocalSystem

    system = LocalSystem(run.tmp / f"{mode}-{index}", partitions=args.partitions,
                         extra_env=mode_env(mode, sink, args.trace_env))
    run.on_exit(system.stop, logs=system.logs)
    system.start()
    spans_before = sink.count
    names_before = sink.names.copy()
    try:
        pids = {"gateway": system.gateway.pid, "room": system.rooms[0].pid,
                "ratelimit": system.ratelimit.pid, "projector": system.projector.pid,
                "nats": system.nats.process.pid}
        base = {
            "host": system.host, "port": system.port, "pids": pids, "compression": "none",
            "uvloop": True, "connect_concurrency": 50, "open_timeout": 30.0,
            "barrier_timeout": 120.0, "drain_timeout": 10.0, "late_timeout": 30.0,
        }
        wait_quiet([pids["gateway"], pids["room"]])
        result = chat_bench.latency_run(base, args, args.listeners, f"o{secrets.token_hex(3)}")
        charges = charge_round_trips(f"{system.base_url}/metrics") if mode != "off" else None
    finally:
        system.stop()  # the processes flush the spans they still hold as they stop
    cpu = result["cpu_percent"]
    core_seconds = {name: cpu.get(name, 0.0) / 100 * args.duration for name in SERVICES}
    sent_in_window = max(1, round(args.rate * args.duration))
    per_message_us = {n: 1e6 * s / sent_in_window for n, s in core_seconds.items()}
    return {
        "mode": mode,
        "latency_ms": result["latency_ms"],
        "lost": result["lost"],
        # the shortfall, explained: lost = not_accepted_deliveries + lost_accepted
        "not_accepted": result["not_accepted"],
        "not_accepted_deliveries": result["not_accepted_deliveries"],
        "lost_accepted": result["lost_accepted"],
        "late": result["late"],
        "listeners_not_drained": result["listeners_not_drained"],
        "error_frames": result["error_frames"],
        "error_kinds": result["error_kinds"],
        "first_error": result["first_error"],
        "closed_early": result["closed_early"],
        "cpu_percent": {n: cpu.get(n) for n in (*SERVICES, "nats", "machine")},
        "cpu_us_per_message": per_message_us,
        "cpu_us_per_message_total": sum(per_message_us.values()),
        # every span of the run (startup, joins and warm-up included)
        "spans_exported": sink.count - spans_before,
        "spans_by_name": {f"{svc} {name}": n for (svc, name), n in (sink.names - names_before).items()},
        "sent": result["sent"],
        "charges": charges,
    }


def explain(r: dict) -> str:
    """Where the deliveries short of sent x listeners went."""
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(r["error_kinds"].items())) or "none"
    return (f"lost {r['lost']} (= {r['not_accepted']} msgs refused x listeners "
            f"{r['not_accepted_deliveries']} + accepted-not-delivered {r['lost_accepted']}; "
            f"error frames: {kinds}; late {r['late']}, closed {r['closed_early']})"
            + (f" charges >5ms {r['charges'].get('over_5ms')}/{r['charges'].get('charges')}"
               f" >10ms {r['charges'].get('over_10ms')}; gateway refusals by source "
               f"{r['charges'].get('refusals')}" if r.get("charges") else ""))


def spread(values: list[float]) -> str:
    """`mean [min–max]` of the runs of one mode."""
    return f"{sum(values) / len(values):.1f} [{min(values):.1f}–{max(values):.1f}]"


def summarize(runs: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        out[mode] = {
            "cpu_us_per_message": sum(r["cpu_us_per_message_total"] for r in mine) / len(mine),
            "cpu_us_per_message_runs": [r["cpu_us_per_message_total"] for r in mine],
            "p50_ms": sum(r["latency_ms"]["p50"] for r in mine) / len(mine),
            "p99_ms": sum(r["latency_ms"]["p99"] for r in mine) / len(mine),
            "p99_ms_runs": [r["latency_ms"]["p99"] for r in mine],
            "machine_percent_runs": [r["cpu_percent"]["machine"] for r in mine],
            # deliveries short of sent x listeners, and why
            "short": sum(r["lost"] for r in mine),
            "refused_messages": sum(r["not_accepted"] for r in mine),
            "lost": sum(r["lost_accepted"] for r in mine),  # accepted, never delivered
            "late": sum(r["late"] for r in mine),
            "closed": sum(r["closed_early"] for r in mine),
            # warm-up and joins included: an upper bound of the spans one message costs
            "spans_per_message": sum(r["spans_exported"] for r in mine) / max(1, sum(r["sent"] for r in mine)),
        }
    base = out.get("off")
    for figures in out.values():
        if base:
            figures["cpu_overhead"] = figures["cpu_us_per_message"] / base["cpu_us_per_message"] - 1
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with BenchRun(args, "durachat-observe-bench-", {"metrics_cpu_overhead": TARGET_CPU_OVERHEAD}) as run, \
            OtlpSink(keep=False) as sink:
        print(f"durachat observability overhead: {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}; {args.rate:g} msg/s into a room of {args.listeners} "
              f"listeners, {args.duration:g} s per run, {args.rounds} round(s) of {', '.join(args.modes)}",
              flush=True)
        runs = []
        for index in range(args.rounds):
            for mode in args.modes:
                r = one_run(run, args, mode, sink, index)
                runs.append(r)
                print(f"  round {index + 1} {mode:8} cpu/msg {r['cpu_us_per_message_total']:7.1f} core-µs "
                      f"p50 {fmt(r['latency_ms']['p50'])} ms p99 {fmt(r['latency_ms']['p99'])} ms "
                      f"{explain(r)} spans {r['spans_exported']}", flush=True)
        summary = summarize(runs)
        run.report["runs"] = runs
        run.report["summary"] = summary
        rows = []
        for mode, s in summary.items():
            rows.append([mode, spread(s["cpu_us_per_message_runs"]),
                         f"{100 * s.get('cpu_overhead', 0):+.1f}%", fmt(s["p50_ms"]),
                         spread(s["p99_ms_runs"]), spread(s["machine_percent_runs"]),
                         f"{s['refused_messages']} / {s['lost']} / {s['late']}",
                         f"{s['spans_per_message']:.1f}"])
        print()
        print(table(rows, ["mode", "core-µs/msg mean [min–max]", "vs off", "p50 ms",
                           "p99 ms mean [min–max]", "machine % [min–max]",
                           "refused / lost / late", "spans/msg"]))
        print("refused: messages the gateway's demo gate refused (an error frame to the sender: "
              "it arrived while the previous frame's limiter charge was in flight); lost: "
              "accepted (echoed to the sender) but not delivered to a listener; late: delivered "
              "after the drain")
        if "metrics" in summary and "off" in summary:
            overhead = summary["metrics"]["cpu_overhead"]
            verdict = "meets" if overhead <= TARGET_CPU_OVERHEAD else "misses"
            print(f"\nmetrics: {100 * overhead:+.1f}% CPU per message ({verdict} the ≤ "
                  f"{100 * TARGET_CPU_OVERHEAD:.0f}% target; figures are noisy on a shared machine)")
        if "traces" in summary and "off" in summary:
            print(f"traces: {100 * summary['traces']['cpu_overhead']:+.1f}% CPU per message, "
                  f"p99 {fmt(summary['traces']['p99_ms'])} ms vs {fmt(summary['off']['p99_ms'])} ms off")
    return run.status


if __name__ == "__main__":
    sys.exit(main())
