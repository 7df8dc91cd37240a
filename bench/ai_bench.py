"""AI reply streaming: the overhead from the AI provider's chunk to every member's socket.

The whole system runs as real processes (`LocalSystem`: nats-server, room, context, ratelimit,
projector and gateway, on free ports in a temp dir). The context service calls Gemini through
the real google-genai client, pointed at `tests/fakes/gemini.py`: a local server speaking the
Gemini REST API from a thread of this process, which streams scripted chunks at a fixed rate
and records when it wrote each one (`FakeGemini.emitted`, `time.time()`).

A load process (spawned, so its CPU is its own and the fake's thread never waits for the GIL
behind the clients; `--load-procs N` splits the members) opens the members' sockets in one
room; member 0 asks `@ai ...`. Every socket is read continuously: `bench/load.py`'s Sans-I/O
socket timestamps each frame (`time.time()`) in `data_received`, as its bytes arrive
(`--client tasks`: websockets' asyncio client, one reader task per socket, for comparison).
Each chunk's text is unique (`w000123 ...`), so a frame is matched to the chunk(s) it carries;
a frame that carries several (the room coalesces text that arrives while an append is in
flight) counts for each of them, against each one's own emission time.

    latency(chunk, member) = time the member's frame with that chunk arrived
                             - time the fake provider wrote the chunk

A third process taps NATS (the AppendAiReply command, the JetStream commit, the room's
broadcast) to show where the time goes. Target: p99 <= 10 ms with 100 members.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import re
import secrets
import sys
import time

from bench import load
from bench.measure import (
    BenchRun,
    Child,
    CpuMeter,
    arguments,
    child_main,
    fmt,
    fmt_stats,
    others,
    percentiles,
    raise_fd_limit,
    receive_all,
    table,
    wait_quiet,
)

TARGET_P99_MS = 10.0
TARGET_MEMBERS = 100
KEY = re.compile(r"w(\d{6}) ")
KEY_BYTES = re.compile(rb"w(\d{6}) ")
FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
FINAL_MARK = '"kind":"ai"'


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = arguments("bench.ai_bench", __doc__,
                  quick="short run: 2 replies x 20 chunks (after a 5-chunk warm-up reply)")
    p.add_argument("--rate", type=float, default=20.0, help="chunks/s the provider streams")
    p.add_argument("--replies", type=int, help="measured replies per configuration (default 3, quick 2)")
    p.add_argument("--chunks", type=int, help="chunks per reply (default 60, quick 20)")
    p.add_argument("--warmup-chunks", type=int,
                   help="chunks of the unmeasured first reply in each room (default 10, quick 5)")
    p.add_argument("--chunk-chars", type=int, default=32,
                   help="characters per chunk (a unique 8-character key, then filler words)")
    p.add_argument("--members", type=int, default=TARGET_MEMBERS,
                   help="members in the room of the main configuration (the asker is one)")
    p.add_argument("--baseline-members", type=int, default=1,
                   help="members of the baseline configuration (0: no baseline)")
    p.add_argument("--client", choices=["protocol", "tasks"], default="protocol",
                   help="protocol: bench/load.py's Sans-I/O sockets, each frame timestamped in "
                        "data_received; tasks: websockets.asyncio.client with one reader task "
                        "per socket (timestamps include the load loop's task scheduling)")
    p.add_argument("--quiet-wait", type=float,
                   help="seconds to wait, before each configuration, for the machine to be under "
                        "25%% of a core busy (default 60, quick 20)")
    p.add_argument("--load-procs", type=int, default=1,
                   help="load processes the members are split over (member i in process i %% N; "
                        "the asker in the first); more shows how much of the spread is the client")
    p.add_argument("--no-tap", action="store_true",
                   help="no NATS tap process (no 'where the time goes' table)")
    p.add_argument("--compression", choices=["deflate", "none"], default="deflate",
                   help="offer permessage-deflate as browsers do (the gateway declines it)")
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--no-uvloop", action="store_true", help="plain asyncio loop in the load process")
    args = p.parse_args(argv)
    if args.replies is None:
        args.replies = 2 if args.quick else 3
    if args.chunks is None:
        args.chunks = 20 if args.quick else 60
    if args.quiet_wait is None:
        args.quiet_wait = 20.0 if args.quick else 60.0
    if args.warmup_chunks is None:
        args.warmup_chunks = 5 if args.quick else 10
    if args.rate <= 0 or args.replies < 1 or args.chunks < 1 or args.members < 1:
        p.error("--rate, --replies, --chunks and --members must be positive")
    args.chunk_chars = max(8, args.chunk_chars)
    return args


# --- the provider's chunks --------------------------------------------------------------------


def chunk_text(n: int, chars: int) -> str:
    """Chunk number `n`: a key no other chunk has ("w000123 "), padded with filler words."""
    key = f"w{n:06d} "
    filler = (FILLER * (1 + chars // len(FILLER)))[: max(0, chars - len(key) - 1)].rstrip()
    return key + (filler + " " if filler else "")


# --- child processes (spawned) ----------------------------------------------------------------


def load_entry(cfg: dict, barrier, conn, parent: int) -> None:
    child_main(lambda: members_run(cfg, barrier), conn, parent, barrier, uvloop=cfg["uvloop"])


def tap_entry(cfg: dict, conn, parent: int) -> None:
    child_main(lambda: tap_run(cfg, conn), conn, parent, uvloop=cfg["uvloop"])


class Member:
    """One member's socket: every text frame with its arrival time (time.time())."""

    def __init__(self, replies: int) -> None:
        self.frames: list[tuple[float, bytes | str]] = []
        self.finals = 0
        loop = asyncio.get_running_loop()
        self.final: list[asyncio.Future] = [loop.create_future() for _ in range(replies)]

    def on_text(self, _rx_ns: int, data: bytes | str) -> None:
        """load.Socket's callback: called from data_received, as the bytes arrive."""
        self.frames.append((time.time(), data))
        if (FINAL_MARK in data) if isinstance(data, str) else (FINAL_MARK.encode() in data):
            if self.finals < len(self.final):
                self.final[self.finals].set_result(None)
            self.finals += 1


class TaskSocket:
    """A member on websockets.asyncio.client with one reader task (the --client tasks mode)."""

    def __init__(self, ws, member: Member) -> None:
        self.ws = ws
        self.member = member
        self.sends: set[asyncio.Task] = set()
        self.task = asyncio.create_task(self.read())

    async def read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        on_text = self.member.on_text
        try:
            async for message in self.ws:
                on_text(0, message)
        except ConnectionClosed:
            pass

    def send_text(self, text: str) -> None:
        send = asyncio.create_task(self.ws.send(text))
        self.sends.add(send)
        send.add_done_callback(self.sends.discard)

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait([self.task], timeout=5)


async def join_tasks(cfg: dict, specs: list[tuple[str, str, Member]]) -> list[TaskSocket]:
    from websockets.asyncio.client import connect

    limit = asyncio.Semaphore(cfg["connect_concurrency"])
    uri_base = f"ws://{cfg['host']}:{cfg['port']}/api/room/"

    async def one(room: str, name: str, member: Member) -> TaskSocket:
        async with limit:
            ws = await connect(
                uri_base + room + "/websocket", max_size=1 << 20, open_timeout=cfg["open_timeout"],
                compression="deflate" if cfg["compression"] == "deflate" else None,
            )
            await ws.send(json.dumps({"name": name}))
            async with asyncio.timeout(cfg["open_timeout"]):
                while True:
                    message = await ws.recv()
                    if message.startswith('{"error"'):
                        raise RuntimeError(message)
                    if message == '{"ready":true}':
                        break
            return TaskSocket(ws, member)

    return list(await asyncio.gather(*(one(*spec) for spec in specs)))


async def members_run(cfg: dict, barrier) -> dict:
    """A load process: open its share of the members (member i goes to process i % procs),
    then, reply after reply (the first a warm-up), process 0's member 0 asks and every process
    waits until each of its members has the final message; the processes meet at a barrier
    before the next question."""
    room, n, replies = cfg["room"], cfg["members"], cfg["replies"]
    index, procs = cfg["index"], cfg["procs"]
    ids = [i for i in range(n) if i % procs == index]
    members = [Member(replies) for _ in ids]
    names = ["asker" if i == 0 else f"m{i}" for i in ids]
    specs = [(room, name, member) for name, member in zip(names, members)]
    timeout = cfg["chunks_per_reply"] / cfg["rate"] + 30.0
    pids = cfg["pids"] if index == 0 else {}
    t0 = time.monotonic()
    if cfg["client"] == "tasks":
        sockets = await join_tasks(cfg, specs)
    else:
        sockets = await load.join_all(cfg, [(r, nm, m.on_text) for r, nm, m in specs])
    joined_s = time.monotonic() - t0
    ok = await load.barrier_wait(barrier, 120.0)
    await asyncio.sleep(0.5)  # the last joins' broadcasts are read before anything is asked
    meter = CpuMeter(pids, self_as="load")
    measured = False
    incomplete = 0
    t_start = t_end = 0.0
    for k in range(replies if ok else 0):
        if k == 1:
            meter.start()
            t_start = time.time()
        if index == 0:
            sockets[0].send_text(json.dumps({"message": f"@ai bench question {k}: stream it"}))
        _, pending = await asyncio.wait([m.final[k] for m in members], timeout=timeout)
        if pending:
            incomplete += len(pending)
            if barrier is not None:
                barrier.abort()
            break
        if not await load.barrier_wait(barrier, timeout):
            break
        if k == replies - 1 and k >= 1:
            meter.stop()
            t_end, measured = time.time(), True
        else:
            await asyncio.sleep(cfg["pause"])  # the context service records the exchange
    health = load.socket_health(sockets) if cfg["client"] == "protocol" else {}
    if cfg["client"] == "tasks":
        await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
    else:
        await load.close_all(sockets)
    in_window = sum(1 for m in members for t, _ in m.frames if t_start <= t <= t_end)
    return {
        "members": len(members),
        "joined_s": joined_s,
        "frames_in_window": in_window,
        "incomplete_members": incomplete,
        "window_s": t_end - t_start if measured else None,
        "cpu_s": meter.seconds,
        "health": health,
        "frames": [
            [(t, d if isinstance(d, bytes) else d.encode()) for t, d in m.frames] for m in members
        ],
    }


async def tap_run(cfg: dict, conn) -> dict:
    """Subscribe to the room's command, event and broadcast subjects; record every message
    with its arrival time until the parent says stop."""
    import nats

    from contracts.keys import subject_token

    token = subject_token(cfg["room"])
    records: dict[str, list[tuple[float, bytes]]] = {"cmd": [], "evt": [], "out": []}
    nc = await nats.connect(cfg["nats_url"], name="durachat-ai-bench-tap")

    def recorder(rec: list):
        async def on_message(msg) -> None:
            rec.append((time.time(), msg.data))
        return on_message

    # Commands reach the owner as cmd.room.<partition>.<token> (after the server's mapping).
    await nc.subscribe(f"cmd.room.*.{token}", cb=recorder(records["cmd"]))
    await nc.subscribe(f"evt.room.{token}", cb=recorder(records["evt"]))
    await nc.subscribe(f"out.room.{token}", cb=recorder(records["out"]))
    await nc.flush()
    conn.send("ready")
    await load.from_parent(conn)  # "stop"
    await nc.flush()
    await asyncio.sleep(0.1)
    await nc.close()
    return {"records": records}


# --- one configuration ------------------------------------------------------------------------


def run_config(fake, base: dict, args, members: int, room: str, counter: list[int]) -> dict:
    """Script the provider, run the members (and the tap), and measure."""
    from tests.fakes.gemini import Reply

    interval = 1.0 / args.rate
    replies: list[list[str]] = []
    for size in [args.warmup_chunks] + [args.chunks] * args.replies:
        texts = [chunk_text(counter[0] + i, args.chunk_chars) for i in range(size)]
        counter[0] += size
        replies.append(texts)
    fake.script(*(Reply(texts, interval=interval) for texts in replies))
    emitted_before = len(fake.emitted)

    cfg = base | {
        "room": room, "members": members, "replies": len(replies), "rate": args.rate,
        "chunks_per_reply": max(args.chunks, args.warmup_chunks), "pause": 0.3,
    }
    tap = None
    if not args.no_tap:
        tap = Child(tap_entry, (cfg,), f"ai-bench-tap-{members}")
        if tap.receive(30) != "ready":
            tap.stop(0)
            raise RuntimeError("the NATS tap did not start")
    timeout = len(replies) * (cfg["chunks_per_reply"] / args.rate + 40) + 120
    procs = max(1, min(args.load_procs, members))
    barrier = mp.get_context("spawn").Barrier(procs) if procs > 1 else None
    children = []
    try:
        for index in range(procs):
            children.append(Child(load_entry, (cfg | {"index": index, "procs": procs}, barrier),
                                  f"ai-bench-members-{members}-{index}"))
        results = receive_all(children, timeout)
    finally:
        for child in children:
            child.stop()
        if tap is not None:
            try:
                tap.send("stop")
                tapped = tap.receive(10)["records"]
            except (OSError, RuntimeError):
                tapped = None
            tap.stop()
    emitted = fake.emitted[emitted_before:]
    head = results[0]
    cpu = dict(head["cpu_s"])
    if cpu:
        cpu["load"] = sum(r["cpu_s"].get("load", 0.0) for r in results)
    health = {}
    if head["health"]:
        health = {
            "error_frames": sum(r["health"]["error_frames"] for r in results),
            "first_error": next((r["health"]["first_error"] for r in results
                                 if r["health"]["first_error"]), None),
            "closed_early": sum(r["health"]["closed_early"] for r in results),
        }
    merged = {
        "members": members,
        "load_procs": procs,
        "joined_s": max(r["joined_s"] for r in results),
        "frames_in_window": sum(r["frames_in_window"] for r in results),
        "incomplete_members": sum(r["incomplete_members"] for r in results),
        "window_s": head["window_s"],
        "cpu_s": cpu,
        "health": health,
        "frames": [f for r in results for f in r["frames"]],  # the asker first
    }
    return analyse(merged, tapped, emitted, replies, args)


def analyse(result: dict, tapped: dict | None, emitted, replies: list[list[str]], args) -> dict:
    measured = {KEY.match(t).group(1): (r, i) for r, texts in enumerate(replies[1:], 1)
                for i, t in enumerate(texts)}
    text_of = {KEY.match(t).group(1): t for texts in replies for t in texts}
    emit_at = {}
    for t, text in emitted:
        m = KEY.match(text)
        if m:
            emit_at.setdefault(m.group(1), t)
    m_emitted = [emit_at[k] for k in measured if k in emit_at]
    spans = []  # (chunks - 1, seconds from a reply's first chunk to its last)
    for texts in replies[1:]:
        times = [emit_at[k] for k in (KEY.match(t).group(1) for t in texts) if k in emit_at]
        if len(times) > 1:
            spans.append((len(times) - 1, max(times) - min(times)))
    span_s = sum(s for _, s in spans)
    rate = sum(n for n, _ in spans) / span_s if span_s > 0 else None

    n = result["members"]
    lat: list[float] = []
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    received: dict[str, int] = {}
    frames_per_member: list[int] = []
    texts_per_frame: list[int] = []
    unmatched = duplicates = 0
    finals_ok = finals_bad = failed = 0
    expected_final = ["".join(texts) for texts in replies]
    for mi, frames in enumerate(result["frames"]):
        seen: set[str] = set()
        count = 0
        finals = 0
        for rx, data in frames:
            if b'"ai":' in data and b'"chunk"' in data:
                frame = json.loads(data)["ai"]
                if frame.get("event") != "chunk":
                    continue
                text = frame["text"]
                keys = KEY.findall(text)
                if "".join(text_of.get(k, "?") for k in keys) != text:
                    unmatched += 1
                keys = [k for k in keys if k in measured]
                if not keys:
                    continue
                count += 1
                if mi == 0:
                    texts_per_frame.append(len(keys))
                for k in keys:
                    if k in seen:
                        duplicates += 1
                        continue
                    seen.add(k)
                    if k not in emit_at:
                        continue
                    ms = (rx - emit_at[k]) * 1000
                    lat.append(ms)
                    received[k] = received.get(k, 0) + 1
                    first[k] = min(first.get(k, ms), ms)
                    last[k] = max(last.get(k, ms), ms)
            elif FINAL_MARK.encode() in data:
                frame = json.loads(data)
                if finals < len(expected_final):
                    if frame.get("message") == expected_final[finals]:
                        finals_ok += 1
                    else:
                        finals_bad += 1
                finals += 1
            elif b'"failed"' in data:
                failed += 1
        frames_per_member.append(count)

    out = {
        "members": n,
        "load_procs": result["load_procs"],
        "chunks_scripted": sum(len(t) for t in replies[1:]),
        "chunks_emitted": len(m_emitted),
        "emit_rate": rate,
        "expected_pairs": len(measured) * n,
        "delivered_pairs": len(lat),
        "duplicates": duplicates,
        "unmatched_frames": unmatched,
        "finals_ok": finals_ok,
        "finals_wrong": finals_bad,
        "failed_events": failed,
        "incomplete_members": result["incomplete_members"],
        "latency_ms": percentiles(lat),
        "first_member_ms": percentiles(list(first.values())),
        "last_member_ms": percentiles(list(last.values())),
        "spread_ms": percentiles([last[k] - first[k] for k in first]),
        "frames_per_member": {"min": min(frames_per_member), "max": max(frames_per_member),
                              "per_reply": sum(frames_per_member) / n / len(replies[1:])},
        "texts_per_frame": {
            "mean": sum(texts_per_frame) / len(texts_per_frame) if texts_per_frame else None,
            "max": max(texts_per_frame, default=None),
            "frames_with_several": sum(1 for x in texts_per_frame if x > 1),
            "frames": len(texts_per_frame),
        },
        "joined_s": result["joined_s"],
        "window_s": result["window_s"],
        "frames_in_window": result["frames_in_window"],
        "cpu_s": result["cpu_s"],
        "health": result["health"],
    }
    if tapped is not None:
        out["stages"] = stages(tapped, emit_at, measured, first, last)
    return out


def stages(tapped: dict, emit_at: dict, measured: dict, first: dict, last: dict) -> dict:
    """Per measured chunk, when the tap saw it: the AppendAiReply command (the context service
    is done with it), the commit published to JetStream (the room decided), the broadcast
    (JetStream acknowledged; the gateway gets it now)."""
    seen: dict[str, dict[str, float]] = {"cmd": {}, "evt": {}, "out": {}}
    appends = {"cmd": 0, "evt": 0, "out": 0}
    for subject, records in tapped.items():
        for t, data in records:
            keys = [k.decode() for k in KEY_BYTES.findall(data)]
            new = [k for k in keys if k in measured and k not in seen[subject]]
            if new:  # (the completed reply's commit and broadcast repeat every chunk: not new)
                appends[subject] += 1
            for k in new:
                seen[subject][k] = t
    ms = lambda a, b: (b - a) * 1000  # noqa: E731
    common = [k for k in measured if k in emit_at and all(k in seen[s] for s in seen) and k in first]
    return {
        "chunks": len(common),
        "appends": appends["cmd"],
        "commits": appends["evt"],
        "provider_to_command": percentiles([ms(emit_at[k], seen["cmd"][k]) for k in common]),
        "command_to_commit": percentiles([ms(seen["cmd"][k], seen["evt"][k]) for k in common]),
        "commit_to_broadcast": percentiles([ms(seen["evt"][k], seen["out"][k]) for k in common]),
        "provider_to_broadcast": percentiles([ms(emit_at[k], seen["out"][k]) for k in common]),
        "broadcast_to_first": percentiles([first[k] - ms(emit_at[k], seen["out"][k]) for k in common]),
        "broadcast_to_last": percentiles([last[k] - ms(emit_at[k], seen["out"][k]) for k in common]),
    }


# --- output ---------------------------------------------------------------------------------------


def triple(s: dict) -> str:
    return fmt_stats(s, "p50", "p99", "max")


CPU_ORDER = ["gateway", "room", "context", "nats", "ratelimit", "projector", "bench", "load"]
CPU_LABELS = {"bench": "bench (fake Gemini)", "load": "load (clients)"}


def print_report(runs: list[dict], args) -> None:
    main = runs[-1]
    base = runs[0] if len(runs) == 2 else None
    print(f"\n[1] Provider chunk written -> chunk frame read at a member's socket (ms); "
          f"{args.replies} replies x {args.chunks} chunks at {args.rate:g} chunks/s, "
          f"{args.chunk_chars} chars per chunk")
    header = ["", *[f"{r['members']} member(s)" for r in runs]]
    if base:
        header.append("ratio")
    header.append("target")

    def ratio(a, b):
        return f"{b / a:.1f}x" if a and b is not None else "-"

    rows = []
    for key, label in (("p50", "p50"), ("p99", "p99"), ("max", "max")):
        cells = [f"{label} (all chunk x member pairs)", *[fmt(r["latency_ms"][key]) for r in runs]]
        if base:
            cells.append(ratio(base["latency_ms"][key], main["latency_ms"][key]))
        if key == "p99" and main["members"] == TARGET_MEMBERS:
            p99 = main["latency_ms"]["p99"]
            ok = p99 is not None and p99 <= TARGET_P99_MS
            cells.append(f"<= {TARGET_P99_MS:g} with {TARGET_MEMBERS} members "
                         f"{'ok' if ok else 'MISSED'}")
        elif key == "p99":
            cells.append(f"<= {TARGET_P99_MS:g} with {TARGET_MEMBERS} members (not this run)")
        else:
            cells.append("")
        rows.append(cells)
    extra = [
        ("first member per chunk p50/p99/max", lambda r: triple(r["first_member_ms"])),
        ("last member per chunk p50/p99/max", lambda r: triple(r["last_member_ms"])),
        ("fan-out spread last-first p50/p99/max", lambda r: triple(r["spread_ms"])),
        ("chunks emitted (achieved chunks/s)",
         lambda r: f"{r['chunks_emitted']} of {r['chunks_scripted']} ({fmt(r['emit_rate'])}/s)"),
        ("chunk frames per member (per reply)",
         lambda r: f"{r['frames_per_member']['min']}"
                   f"{'' if r['frames_per_member']['min'] == r['frames_per_member']['max'] else '-' + str(r['frames_per_member']['max'])}"
                   f" ({r['frames_per_member']['per_reply']:.1f})"),
        ("chunk texts per frame mean / max",
         lambda r: f"{fmt(r['texts_per_frame']['mean'])} / {r['texts_per_frame']['max']} "
                   f"({r['texts_per_frame']['frames_with_several']} of "
                   f"{r['texts_per_frame']['frames']} frames hold >1)"),
        ("delivered / expected (chunk, member)",
         lambda r: f"{r['delivered_pairs']:,} / {r['expected_pairs']:,}"),
        ("final messages right / wrong; failed",
         lambda r: f"{r['finals_ok']} / {r['finals_wrong']}; {r['failed_events']}"),
        ("duplicates / unmatched frames", lambda r: f"{r['duplicates']} / {r['unmatched_frames']}"),
    ]
    for label, fn in extra:
        cells = [label, *[fn(r) for r in runs]]
        if base:
            cells.append("")
        cells.append("")
        rows.append(cells)
    print(table(rows, header))

    if all("stages" in r for r in runs):
        print("\n[2] Where the time goes, per chunk, p50 / p99 / max (ms); a tap process on NATS "
              "sees each message when a subscriber (the room, the gateway) would")
        labels = [
            ("provider_to_command", "provider -> AppendAiReply on NATS (google-genai, context)"),
            ("command_to_commit", "AppendAiReply -> commit to JetStream (room decides)"),
            ("commit_to_broadcast", "commit -> broadcast on out.room (JetStream ack)"),
            ("provider_to_broadcast", "provider -> broadcast (the sum)"),
            ("broadcast_to_first", "broadcast -> first member's socket (gateway, client)"),
            ("broadcast_to_last", "broadcast -> last member's socket"),
        ]
        rows = [[label, *[triple(r["stages"][key]) for r in runs]] for key, label in labels]
        rows.append(["AppendAiReply commands / chunk commits",
                     *[f"{r['stages']['appends']} / {r['stages']['commits']}" for r in runs]])
        print(table(rows, ["", *[f"{r['members']} member(s)" for r in runs]]))

    print("\n[3] CPU during the measured replies: % of one core (CPU ms per chunk)")
    rows = []
    for name in CPU_ORDER + ["machine", "other processes"]:
        cells = [CPU_LABELS.get(name, name)]
        for r in runs:
            cpu, window = r["cpu_s"], r["window_s"]
            if not cpu or not window:
                cells.append("-")
                continue
            if name == "other processes":
                value = others(cpu)
            elif name in cpu:
                value = cpu[name]
            else:
                cells.append("-")
                continue
            per_chunk = 1000 * value / max(1, r["chunks_emitted"])
            cells.append(f"{100 * value / window:.0f}% ({per_chunk:.2f})")
        rows.append(cells)
    print(table(rows, ["", *[f"{r['members']} member(s)" for r in runs]]))
    print(f"    machine: {os.cpu_count()} CPUs = {100 * (os.cpu_count() or 1)}%; "
          "'other processes' is the machine's busy time not used by the system or the bench")

    notes = []
    for r in runs:
        cpu, window = r["cpu_s"], r["window_s"]
        frames = r["frames_in_window"]
        if cpu and window and frames and r["members"] > 1:
            per_frame_us = 1e6 * cpu.get("load", 0.0) / frames
            procs = r["load_procs"]
            per_proc = -(-r["members"] // procs)
            per_chunk_ms = per_frame_us * per_proc / 1000
            load_pct = 100 * cpu.get("load", 0.0) / window
            notes.append(
                f"client ({r['members']} members in {procs} load process(es), --client "
                f"{args.client}): {per_frame_us:.0f} us of load CPU per frame read, so "
                f"~{per_chunk_ms:.2f} ms for one process to read a chunk's {per_proc} frames "
                f"(load at {load_pct:.0f}% of a core in all), against a fan-out spread p50 of "
                f"{fmt(r['spread_ms']['p50'])} ms; "
                + ("close enough that the bench's own client may be part of the spread and of "
                   "the later members' latency (the first-member row is the least affected); "
                   "--load-procs 2 tells: if the spread stays, it is the system's"
                   if r["spread_ms"]["p50"] and per_chunk_ms > 0.5 * r["spread_ms"]["p50"]
                   else "the spread is therefore the system's, not the client's")
            )
        if cpu and window and any(100 * cpu.get(k, 0.0) / window > 80 for k in ("load", "bench")):
            notes.append(f"the bench itself ran above 80% of a core ({r['members']} members): "
                         "its figures are limited by the bench, not the system")
        rest = others(cpu) if cpu else 0.0
        if window and 100 * rest / window > 20:
            notes.append(f"other processes used {100 * rest / window:.0f}% of a core during the "
                         f"{r['members']}-member run: the figures are disturbed")
        problems = []
        if r["delivered_pairs"] != r["expected_pairs"]:
            problems.append(f"{r['expected_pairs'] - r['delivered_pairs']} (chunk, member) pairs "
                            "missing")
        if r["finals_wrong"] or r["failed_events"] or r["incomplete_members"]:
            problems.append(f"{r['finals_wrong']} wrong finals, {r['failed_events']} failed "
                            f"events, {r['incomplete_members']} members without a final")
        if r["health"] and (r["health"].get("error_frames") or r["health"].get("closed_early")):
            problems.append(f"{r['health']['error_frames']} error frames "
                            f"({r['health']['first_error']}), "
                            f"{r['health']['closed_early']} sockets closed early")
        if problems:
            notes.append(f"{r['members']} member(s): " + "; ".join(problems))
    for note in notes:
        print(f"    note: {note}")


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from services.localsystem import LocalSystem
    from tests.fakes.gemini import FakeGemini

    raise_fd_limit(2 * max(args.members, args.baseline_members) + 4096)
    targets = {"p99_ms": TARGET_P99_MS, "members": TARGET_MEMBERS}
    with BenchRun(args, "durachat-ai-bench-", targets) as run:
        fake = FakeGemini()
        run.on_exit(fake.stop)
        fake.start()
        system = LocalSystem(
            run.tmp,
            partitions=args.partitions,
            extra_env={
                "GEMINI_API_KEY": "bench-key",
                "DURACHAT_GEMINI_BASE_URL": fake.base_url,
                # All sockets come from 127.0.0.1: keep the per-IP limits out of reach.
                "DURACHAT_RATE_INTERVAL": "0.000001",
                "DURACHAT_MAX_SOCKETS_PER_IP": "100000",
            },
        )
        run.on_exit(system.stop, logs=system.logs)
        system.start()
        pids = {"gateway": system.gateway.pid, "room": system.rooms[0].pid,
                "context": system.context.pid, "nats": system.nats.process.pid,
                "ratelimit": system.ratelimit.pid, "projector": system.projector.pid,
                "bench": os.getpid()}
        base = {
            "host": system.host, "port": system.port, "pids": pids, "nats_url": system.nats.url,
            "compression": args.compression, "uvloop": not args.no_uvloop, "client": args.client,
            "connect_concurrency": 32, "open_timeout": 30.0,
        }
        print(f"durachat AI streaming benchmark: {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}, {platform.platform()}; machine {run.busy:.0f}% busy "
              f"(of {100 * (os.cpu_count() or 1)}%) before start")
        print(f"provider: {args.replies} replies x {args.chunks} chunks at {args.rate:g} chunks/s "
              f"({args.chunk_chars} chars each) per configuration; members: "
              + (f"{args.baseline_members} (baseline), then " if args.baseline_members > 0 else "")
              + f"{args.members}")
        print(f"system: gateway pid {pids['gateway']} on {system.base_url}, room pid {pids['room']}, "
              f"context pid {pids['context']}, nats-server pid {pids['nats']}; fake Gemini on "
              f"{fake.base_url} (a thread of this process, pid {pids['bench']}); dir {run.tmp}")
        print(f"clients: {args.load_procs} load process(es), --client {args.client}, "
              f"load loop {'asyncio' if args.no_uvloop else 'uvloop'}; each room's first reply "
              f"({args.warmup_chunks} chunks) is a warm-up, not counted", flush=True)

        prefix = f"aib{secrets.token_hex(3)}"
        counter = [0]
        runs = []
        quiet = [pids["gateway"], pids["context"], pids["room"]]
        configs = ([args.baseline_members] if args.baseline_members > 0 else []) + [args.members]
        for members in configs:
            busy_before = wait_quiet(quiet, machine_limit=args.quiet_wait)
            label = "base" if members == args.baseline_members and not runs else "main"
            result = run_config(fake, base, args, members, f"{prefix}-{label}", counter)
            runs.append(result | {"machine_busy_before_percent": round(busy_before, 1)})
        run.report["baseline"] = runs[0] if len(runs) == 2 else None
        run.report["main"] = runs[-1]
        print_report(runs, args)
        if not system.alive():
            raise RuntimeError("a service died during the benchmark")
    return run.status


if __name__ == "__main__":
    sys.exit(main())
