"""The load side of the chat benchmark. It runs in processes of its own (multiprocessing,
spawn), so its CPU is never counted as the gateway's.

Sockets are WebSocket clients built on the `websockets` library's Sans-I/O protocol
(`websockets.client.ClientProtocol`) inside a bare asyncio Protocol: every frame is
timestamped in `data_received`, the moment its bytes reach the process, and is only stored
(parsed after the run). A frame's latency therefore does not include the time the load
process spends scheduling a reader coroutine per socket, and the load process stays cheap
enough to read tens of thousands of frames per second. permessage-deflate is offered as
browsers and `websockets.connect` do (unless `compression == "none"`).

All times are `time.monotonic_ns()`: CLOCK_MONOTONIC, one clock for every process on the
machine, so a send time written into a message by one process can be subtracted from a
receive time taken in another.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from array import array
from collections.abc import Callable
from typing import Any

from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from bench.measure import CpuMeter, child_main, process_quiet, rss_kib

READY = b'{"ready":true}'
ERROR_PREFIX = b'{"error"'
now_ns = time.monotonic_ns


# --- a WebSocket client socket -------------------------------------------------------------------


class Socket(asyncio.Protocol):
    """One chat WebSocket. `on_text(rx_ns, payload)` is called for every text message."""

    def __init__(self, uri: str, compression: str, on_text: Callable[[int, bytes], None] | None):
        extensions = enable_client_permessage_deflate(None) if compression == "deflate" else None
        self.ws = ClientProtocol(parse_uri(uri), extensions=extensions, max_size=1 << 20)
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.parts: list[bytes] = []
        self.texts = 0
        self.errors = 0
        self.first_error: bytes | None = None
        self.error_kinds: dict[str, int] = {}  # error_kind() -> count
        self.deflate = False
        self.named = True

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        rx = now_ns()
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Frame):
                self._frame(rx, event)
            elif isinstance(event, Response):
                if self.ws.handshake_exc is not None:
                    _fail(self.opened, self.ws.handshake_exc)
                else:
                    self.deflate = bool(self.ws.extensions)
                    _done(self.opened)
        self._flush()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        lost = ConnectionError(f"connection lost (close code {self.ws.close_code})")
        _fail(self.opened, lost)
        _fail(self.ready, lost)
        _done(self.closed)

    # frames

    def _frame(self, rx: int, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.CONT:
            if not frame.fin:
                self.parts.append(bytes(frame.data))
                return
            data = bytes(frame.data)
            if self.parts:
                data = b"".join(self.parts) + data
                self.parts = []
            self.texts += 1
            if data.startswith(ERROR_PREFIX):
                self.errors += 1
                kind = error_kind(data)
                self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
                if self.first_error is None:
                    self.first_error = data
                if not self.ready.done():
                    _fail(self.ready, RuntimeError(data.decode(errors="replace")))
            elif not self.ready.done() and data == READY:
                _done(self.ready)
            if self.on_text is not None:
                self.on_text(rx, data)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof() and not transport.is_closing():
                transport.write_eof()

    # API

    @property
    def open(self) -> bool:
        return self.ws.state is State.OPEN

    def send_text(self, text: str) -> None:
        if self.ws.state is State.OPEN:
            self.ws.send_text(text.encode())
            self._flush()

    async def close(self, timeout: float = 5.0) -> None:
        """The closing handshake; the TCP connection is aborted if it takes over `timeout`."""
        if self.ws.state is State.OPEN:
            self.ws.send_close(1000)
            self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()


def error_kind(data: bytes) -> str:
    """Which refusal an error frame is: `ratelimited` (the demo gate or the IP limiter),
    `overloaded` (DURACHAT_MAX_UNANSWERED_FRAMES) or `other`."""
    if b"rate-limited" in data:
        return "ratelimited"
    if b"Too many frames waiting" in data:
        return "overloaded"
    return "other"


def _done(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # retrieved: no "exception never retrieved" noise


async def join(
    cfg: dict, room: str, name: str, on_text: Callable[[int, bytes], None] | None = None,
    source: str | None = None,
) -> Socket:
    """Open a socket to `room` (from address `source`), send the name frame and wait for
    {"ready": true}. With cfg["refused_ok"], a name frame refused by the rate limit leaves the
    socket open and unnamed (`sock.named` False)."""
    loop = asyncio.get_running_loop()
    host, port = cfg["host"], cfg["port"]
    uri = f"ws://{host}:{port}/api/room/{room}/websocket"
    _, sock = await loop.create_connection(
        lambda: Socket(uri, cfg["compression"], on_text), host, port,
        local_addr=(source, 0) if source else None,
    )
    try:
        await asyncio.wait_for(asyncio.shield(sock.opened), cfg["open_timeout"])
        sock.send_text(json.dumps({"name": name}))
        try:
            await asyncio.wait_for(asyncio.shield(sock.ready), cfg["open_timeout"])
        except RuntimeError as exc:  # an error frame came instead of {"ready"}
            if not (cfg.get("refused_ok") and "rate-limited" in str(exc)):
                raise
            sock.named = False
    except BaseException:
        if sock.transport is not None:
            sock.transport.abort()
        raise
    return sock


async def join_all(cfg: dict, specs: list[tuple]) -> list[Socket]:
    """join() for (room, name, on_text[, source]) specs, a bounded number at a time."""
    limit = asyncio.Semaphore(cfg["connect_concurrency"])

    async def one(spec: tuple) -> Socket:
        async with limit:
            return await join(cfg, *spec)

    results = await asyncio.gather(*(one(spec) for spec in specs), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    sockets = [r for r in results if isinstance(r, Socket)]
    if failures:
        await close_all(sockets)
        raise RuntimeError(f"{len(failures)} of {len(specs)} sockets failed to join: {failures[0]!r}")
    return sockets


async def close_all(sockets: list[Socket], timeout: float = 10.0) -> None:
    await asyncio.gather(*(s.close(timeout) for s in sockets), return_exceptions=True)


def socket_health(sockets: list[Socket]) -> dict:
    errors = sum(s.errors for s in sockets)
    first = next((s.first_error for s in sockets if s.first_error), None)
    kinds: dict[str, int] = {}
    for s in sockets:
        for kind, n in s.error_kinds.items():
            kinds[kind] = kinds.get(kind, 0) + n
    return {
        "error_frames": errors,
        "error_kinds": kinds,
        "first_error": first.decode(errors="replace")[:200] if first else None,
        "closed_early": sum(1 for s in sockets if not s.open),
        "deflate": all(s.deflate for s in sockets) if sockets else False,
    }


async def barrier_wait(barrier, timeout: float) -> bool:
    """Wait for the other load processes without blocking the event loop; False if one of
    them gave up (the barrier broke)."""
    if barrier is None:
        return True
    try:
        await asyncio.get_running_loop().run_in_executor(None, barrier.wait, timeout)
        return True
    except threading.BrokenBarrierError:
        return False


async def from_parent(conn):
    """The parent's next message, without blocking the event loop (sockets keep answering)."""
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


def ns(data: bytes) -> array:
    """The nanosecond values a phase sent back as bytes."""
    values = array("q")
    values.frombytes(data)
    return values


# --- phase: latency (1 sender at a fixed rate, L listeners) ------------------------------------


async def latency(cfg: dict, index: int, procs: int, barrier) -> dict:
    """Process `index` of `procs`: listeners i with i % procs == index; process 0 also sends."""
    room = cfg["room"]
    listener_ids = [i for i in range(cfg["listeners"]) if i % procs == index]
    records: list[list[tuple[int, bytes]]] = []
    ended: list[asyncio.Future] = []
    loop = asyncio.get_running_loop()
    end_marker = b'"message":"end",'

    def recorder(rec: list, end: asyncio.Future):
        append = rec.append

        def on_text(rx: int, data: bytes) -> None:
            append((rx, data))
            if end_marker in data and not end.done():
                end.set_result(None)

        return on_text

    specs = []
    for i in listener_ids:
        rec: list[tuple[int, bytes]] = []
        end = loop.create_future()
        records.append(rec)
        ended.append(end)
        specs.append((room, f"l{i}", recorder(rec, end)))
    sockets = await join_all(cfg, specs)
    sender = None
    sender_rec: list[tuple[int, bytes]] = []
    sender_end = loop.create_future()
    if index == 0:
        sender = (await join_all(cfg, [(room, "sender", recorder(sender_rec, sender_end))]))[0]
    if not await barrier_wait(barrier, cfg["barrier_timeout"]):
        raise RuntimeError("another load process failed")

    meter = CpuMeter(cfg["pids"], self_as="load")
    own = CpuMeter({}, self_as="load").start()
    out: dict[str, Any] = {"index": index, "listeners": len(listener_ids)}
    rate, warmup, duration = cfg["rate"], cfg["warmup"], cfg["duration"]
    warm = int(round(rate * warmup))
    total = warm + int(round(rate * duration))
    if sender is not None:
        period = 1.0 / rate
        sent_at: list[float] = []
        t0 = time.monotonic()
        for seq in range(total):
            delay = t0 + seq * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if seq == warm:
                meter.start()
            sent_at.append(time.monotonic())
            sender.send_text(f'{{"message":"{seq}:{now_ns()}"}}')
        out["server_cpu"] = meter.stop()
        # Not inside the last frame's limiter round trip: the gateway, as the chat demo, refuses
        # a frame that arrives while the previous one's charge is in flight.
        await asyncio.sleep(0.05)
        sender.send_text('{"message":"end"}')
        measured = sent_at[warm:]
        out["sent"] = len(measured)
        out["warmup_sent"] = warm
        span = measured[-1] - measured[0] if len(measured) > 1 else 0.0
        out["send_rate"] = (len(measured) - 1) / span if span > 0 else 0.0
        out["late_sends"] = sum(
            1 for seq, t in enumerate(sent_at) if t - (t0 + seq * period) > 0.002
        )
    # Drain: every listener sees "end" (each socket gets frames in room order), or give up.
    # Past that deadline, up to cfg["late_timeout"] more seconds: what still arrives is late
    # (delivered, counted apart), so a shortfall says whether it is lateness or loss.
    deadline = cfg["drain_timeout"] + (0 if sender is not None else warmup + duration)
    waiting = ended + ([sender_end] if sender is not None else [])
    _, pending = await asyncio.wait(waiting, timeout=deadline)
    out["ended"] = len(waiting) - len(pending)
    drained_ns = now_ns()
    if pending and cfg.get("late_timeout"):
        _, pending = await asyncio.wait(pending, timeout=cfg["late_timeout"])
    out["ended_late"] = len(waiting) - len(pending) - out["ended"]
    out["load_cpu"] = own.stop()["load"]
    out["health"] = socket_health(sockets + ([sender] if sender else []))
    await close_all(sockets + ([sender] if sender else []))

    # Parse after the run: only the sender's messages past the warm-up count.
    prefix = b'{"name":"sender","message":"'

    def measured_seq(data: bytes) -> tuple[int, int] | None:
        """(seq past the warm-up, send time) of a message of the sender's, else None."""
        if not data.startswith(prefix):
            return None
        text = json.loads(data)["message"]
        if text == "end":
            return None
        seq_s, sent_ns = text.split(":")
        seq = int(seq_s)
        return None if seq < warm else (seq, int(sent_ns))

    lat = array("q")
    seqs = array("q")
    delivered = duplicates = frames = late = 0
    seen_by: list[set[int]] = []
    for rec in records:
        seen: set[int] = set()
        frames += len(rec)
        for rx, data in rec:
            got = measured_seq(data)
            if got is None:
                continue
            seq, sent_ns = got
            if seq in seen:
                duplicates += 1
                continue
            seen.add(seq)
            late += rx > drained_ns
            lat.append(rx - sent_ns)
            seqs.append(seq - warm)
        delivered += len(seen)
        seen_by.append(seen)
    out.update(delivered=delivered, duplicates=duplicates, frames_received=frames, late=late)
    out["latency_ns"] = lat.tobytes()
    out["seq"] = seqs.tobytes()
    if sender is not None:
        echo = array("q")
        echoed: set[int] = set()
        for rx, data in sender_rec:
            got = measured_seq(data)
            if got is not None:
                echo.append(rx - got[1])
                echoed.add(got[0])
        out["echo_ns"] = echo.tobytes()
        # The room took exactly the messages echoed to their sender (the sender's own socket
        # gets every broadcast in order); the rest were refused (error frames) or lost on the
        # sender's side of the path.
        out["accepted"] = len(echoed)
        out["not_accepted"] = out["sent"] - len(echoed)
        out["echoed"] = sorted(echoed)
    out["seen"] = [sorted(seen) for seen in seen_by]
    return out


# --- phase: throughput into one room (K senders, window W) ---------------------------------------


class Sender:
    """A closed-loop sender: keeps up to `window` of its messages unechoed."""

    def __init__(self, name: str, window: int) -> None:
        self.name = name
        self.window = window
        self.prefix = b'{"name":"%s","message":"' % name.encode()
        self.sock: Socket | None = None
        self.seq = 0
        self.outstanding = 0
        self.acked = 0
        self.in_window = 0
        self.echoes: list[tuple[int, bytes]] = []
        self.running = False
        self.window_start = 0
        self.window_end = 0
        self.drained: asyncio.Future | None = None

    def pump(self) -> None:
        sock = self.sock
        while self.running and self.outstanding < self.window and sock.open:
            sock.send_text(f'{{"message":"{self.seq}:{now_ns()}"}}')
            self.seq += 1
            self.outstanding += 1

    def on_text(self, rx: int, data: bytes) -> None:
        if data.startswith(ERROR_PREFIX):
            # A refused frame is answered too (the gateway, as the demo, refuses a frame that
            # arrives while the previous one's limiter charge is in flight): not outstanding.
            self.outstanding -= 1
            if self.running:
                self.pump()
            elif self.outstanding <= 0 and self.drained is not None and not self.drained.done():
                self.drained.set_result(None)
            return
        if not data.startswith(self.prefix):
            return
        self.outstanding -= 1
        self.acked += 1
        if self.window_start <= rx < self.window_end:
            self.in_window += 1
            self.echoes.append((rx, data))
        if self.running:
            self.pump()
        elif self.outstanding <= 0 and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


async def throughput(cfg: dict, index: int, procs: int, barrier) -> dict:
    room = cfg["room"]
    ids = [i for i in range(cfg["senders"]) if i % procs == index]
    senders = [Sender(f"t{i}", cfg["window"]) for i in ids]
    sockets = await join_all(cfg, [(room, s.name, s.on_text) for s in senders])
    for sender, sock in zip(senders, sockets):
        sender.sock = sock
    if not await barrier_wait(barrier, cfg["barrier_timeout"]):
        raise RuntimeError("another load process failed")

    loop = asyncio.get_running_loop()
    start = now_ns() + int(cfg["warmup"] * 1e9)
    end = start + int(cfg["duration"] * 1e9)
    for s in senders:
        s.window_start, s.window_end = start, end
        s.drained = loop.create_future()
        s.running = True
        s.pump()
    meter = CpuMeter(cfg["pids"] if index == 0 else {}, self_as="load")
    await asyncio.sleep(cfg["warmup"])
    meter.start()
    await asyncio.sleep(max(0.0, (end - now_ns()) / 1e9))
    cpu = meter.stop()
    for s in senders:
        s.running = False
        if s.outstanding <= 0:
            s.drained.set_result(None)
    _, pending = await asyncio.wait([s.drained for s in senders], timeout=cfg["drain_timeout"])
    health = socket_health(sockets)
    await close_all(sockets)

    lat = array("q")
    for s in senders:
        for rx, data in s.echoes:
            lat.append(rx - int(json.loads(data)["message"].split(":")[1]))
    return {
        "index": index,
        "senders": len(senders),
        "sent": sum(s.seq for s in senders),
        "acked": sum(s.acked for s in senders),
        "acked_in_window": sum(s.in_window for s in senders),
        "unechoed": sum(max(0, s.outstanding) for s in senders),
        "stalled_senders": len(pending),
        "window_s": (end - start) / 1e9,
        "cpu": cpu,
        "health": health,
        "echo_ns": lat.tobytes(),
    }


# --- phase: memory per idle socket --------------------------------------------------------------


async def memory(cfg: dict, index: int, procs: int, barrier) -> dict:
    gateway = cfg["pids"]["gateway"]
    room_pid = cfg["pids"].get("room")
    # Warm the gateway up first (imports, first-use allocations), so "before" is a steady state.
    warm = await join_all(cfg, [(cfg["room"] + "-warm", f"w{i}", None) for i in range(10)])
    warm[0].send_text('{"message":"warm-up"}')
    await asyncio.sleep(0.3)
    await close_all(warm)
    await process_quiet(gateway)
    before = {"gateway": rss_kib(gateway), "room": rss_kib(room_pid) if room_pid else None}

    n, rooms = cfg["sockets"], cfg["rooms"]
    counter = [0]

    def count(rx: int, data: bytes) -> None:
        counter[0] += 1

    t0 = time.monotonic()
    sockets = await join_all(cfg, [(f"{cfg['room']}-{i % rooms}", f"m{i}", count) for i in range(n)])
    open_s = time.monotonic() - t0
    await process_quiet(gateway)
    after = {"gateway": rss_kib(gateway), "room": rss_kib(room_pid) if room_pid else None}
    health = socket_health(sockets)
    t0 = time.monotonic()
    await close_all(sockets)
    close_s = time.monotonic() - t0
    await process_quiet(gateway)
    released = rss_kib(gateway)
    return {
        "sockets": n,
        "rooms": rooms,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_after_close_kib": released,
        "open_seconds": open_s,
        "close_seconds": close_s,
        "frames_received": counter[0],
        "health": health,
    }


# --- process entry ------------------------------------------------------------------------------

PHASES = {"latency": latency, "throughput": throughput, "memory": memory}


def entry(kind: str, cfg: dict, index: int, procs: int, barrier, conn, parent: int) -> None:
    """Target of a spawned load process: run one phase, send its result dict through `conn`."""
    child_main(lambda: PHASES[kind](cfg, index, procs, barrier), conn, parent, barrier,
               uvloop=cfg.get("uvloop", True))
