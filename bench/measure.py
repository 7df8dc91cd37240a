"""What every benchmark is built from: the run around it (temp dir, report, stopping what it
started, --json), the processes it spawns, /proc CPU and RSS readings, percentiles, py-spy,
and the report's tables."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the run around a benchmark -----------------------------------------------------------------


def arguments(module: str, doc: str, quick: str) -> argparse.ArgumentParser:
    """The parser every benchmark starts from: --quick, --json and --keep-dir."""
    p = argparse.ArgumentParser(
        prog=f"python -m {module}", description=doc.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here as JSON")
    p.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs, JetStream store)")
    return p


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class BenchRun:
    """One run of a benchmark, as a `with` block: a temp dir, the report (machine, config,
    targets, then what the block adds), and what the block started, stopped by PID in reverse
    order when it ends, fails, or is stopped by Ctrl-C or SIGTERM; then --json. The block's
    exception is reported, not raised: `status` is 0, 1 (failed) or 130 (interrupted)."""

    def __init__(self, args: argparse.Namespace, prefix: str, targets: dict | None = None) -> None:
        signal.signal(signal.SIGTERM, _interrupt)
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        self.report: dict = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        }
        if targets:
            self.report["targets"] = targets
        self.stops: list[Callable[[], object]] = []
        self.logs: list[Callable[[], str]] = []
        self.status = 0
        self.busy = 0.0

    def on_exit(self, stop: Callable[[], object], logs: Callable[[], str] | None = None) -> None:
        """Run `stop` when the block ends; print `logs()` if it fails."""
        self.stops.append(stop)
        if logs is not None:
            self.logs.append(logs)

    def __enter__(self) -> BenchRun:
        self.busy = machine_busy_percent()
        self.report["machine"]["busy_before_start_percent"] = round(self.busy, 1)
        if self.busy > 25:
            print(f"warning: the machine is already {self.busy:.0f}% busy (of "
                  f"{100 * (os.cpu_count() or 1)}%) before the benchmark starts; the figures "
                  "will be disturbed", file=sys.stderr)
        self.started = time.monotonic()
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is None:
            self.report["elapsed_s"] = round(time.monotonic() - self.started, 1)
            print(f"\ndone in {self.report['elapsed_s']} s")
        elif issubclass(kind, KeyboardInterrupt):
            print("\ninterrupted; stopping what was started", file=sys.stderr)
            self.status = 130
        elif issubclass(kind, Exception):
            if not isinstance(exc, ChildError):  # (a child's error holds its traceback)
                traceback.print_exception(kind, exc, tb, file=sys.stderr)
            print(f"\nbenchmark failed: {exc}", file=sys.stderr)
            for logs in self.logs:
                with contextlib.suppress(OSError):
                    print(logs()[-6000:], file=sys.stderr)
            self.status = 1
        shut_down([*reversed(self.stops), stop_resource_tracker], self.tmp, self.args.keep_dir)
        if self.args.json and self.status == 0 and kind is None:
            write_figures(self.args.json, self.report)
        return kind is None or issubclass(kind, (KeyboardInterrupt, Exception))


def uninterrupted(stops: Iterable[Callable[[], object]]) -> None:
    """Run `stops` in order; a second Ctrl-C must not skip them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for stop in stops:
            stop()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def shut_down(stops: list[Callable[[], object]], tmp: str | Path, keep: bool) -> None:
    """Run `stops`, then remove the benchmark's temp dir, unless it is to be kept."""
    uninterrupted(stops)
    if keep:
        print(f"kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def stop_resource_tracker() -> None:
    """Stop and reap multiprocessing's resource tracker (started by spawn) now rather than
    leave it to exit after us. Best effort: `_stop` is private (Python 3.11+)."""
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        with contextlib.suppress(Exception):
            stop()


def raise_fd_limit(want: int) -> None:
    """Enough descriptors for every socket; children (the gateway too) inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def write_figures(path: Path, report: dict) -> None:
    """Write a benchmark's figures as JSON (`--json PATH`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"figures written to {path}")


# --- spawned child processes --------------------------------------------------------------------


class ChildError(RuntimeError):
    """A child process failed, said nothing in time, or exited without a result."""


class Child:
    """A spawned process (multiprocessing, spawn) and its two-way pipe. It runs
    `target(*args, conn, parent_pid)`, which hands its work to `child_main`."""

    def __init__(self, target: Callable, args: tuple, name: str) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child_end = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=target, args=(*args, child_end, os.getpid()),
                                   name=name, daemon=True)
        self.process.start()
        child_end.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def receive(self, timeout: float):
        """The child's next message (its result dict in the end); ChildError if it failed."""
        name = self.process.name
        if not self.conn.poll(max(0.0, timeout)):
            raise ChildError(f"{name} said nothing within {timeout:.0f} s")
        try:
            message = self.conn.recv()
        except EOFError:
            raise ChildError(f"{name} exited ({self.process.exitcode}) without a result") from None
        if isinstance(message, dict) and "error" in message:
            raise ChildError(f"{name} failed:\n{message['error']}")
        return message

    def send(self, message) -> None:
        self.conn.send(message)

    def stop(self, grace: float = 5.0) -> None:
        """Wait `grace` s for it to exit, then terminate, then kill it (by its PID)."""
        self.process.join(grace)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(3)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def receive_all(children: list[Child], timeout: float) -> list:
    """Each child's next message, all within `timeout` s."""
    deadline = time.monotonic() + timeout
    return [child.receive(deadline - time.monotonic()) for child in children]


def _watch_parent(parent: int) -> None:
    """Exit if the benchmark process goes away (so no child outlives it)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


def child_main(make_coro: Callable, conn, parent: int, barrier=None, uvloop: bool = True) -> None:
    """Body of a spawned child: run `make_coro()` (under uvloop unless told otherwise) and send
    its result, or the traceback, through `conn`; exit when the parent does."""
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        coro = make_coro()
        if uvloop:
            import uvloop as loop

            result = loop.run(coro)
        else:
            result = asyncio.run(coro)
    except KeyboardInterrupt:
        return
    except BaseException:
        if barrier is not None:
            barrier.abort()
        result = {"error": traceback.format_exc()}
    with contextlib.suppress(OSError, ValueError):
        conn.send(result)
        conn.close()


# --- CPU and memory from /proc --------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    """Resident set size of process `pid` in KiB (VmRSS of /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy so far, any process (from /proc/stat). Steal time,
    when the hypervisor ran someone else, is not ours and is not counted."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    steal = values[7] if len(values) > 7 else 0
    return (sum(values[:8]) - idle - steal) / CLK_TCK


def cpu_sample(pids: dict[str, int], self_as: str | None = None) -> dict[str, float]:
    """CPU seconds so far of each named process (those that still exist), of the whole
    machine ("machine"), and, under `self_as`, of this process."""
    sample = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            sample[name] = cpu_seconds(pid)
    if self_as is not None:
        sample[self_as] = time.process_time()
    sample["machine"] = machine_busy_seconds()
    return sample


def cpu_percent(before: dict, after: dict, wall: float) -> dict[str, float]:
    """{process: % of one core} between two cpu_sample()s `wall` seconds apart."""
    if wall <= 0:
        return {}
    return {k: round(100 * (after[k] - before[k]) / wall, 1) for k in after if k in before}


def others(cpu: dict[str, float]) -> float:
    """What the rest of the machine used: "machine" minus every process of the benchmark."""
    ours = sum(v for k, v in cpu.items() if k not in ("machine", "other_processes"))
    return max(0.0, cpu.get("machine", 0.0) - ours)


class CpuMeter:
    """CPU of named processes (and, under `self_as`, this one) and of the whole machine
    between start() and stop()."""

    def __init__(self, pids: dict[str, int], self_as: str | None = None) -> None:
        self.pids = pids
        self.self_as = self_as
        self.seconds: dict[str, float] = {}  # CPU seconds used in the window, after stop()
        self.wall = 0.0

    def start(self) -> CpuMeter:
        self._wall = time.monotonic()
        self._start = cpu_sample(self.pids, self.self_as)
        return self

    def stop(self) -> dict[str, float]:
        """{process: CPU in % of one core} over the window ("machine": all cores)."""
        end = cpu_sample(self.pids, self.self_as)
        self.wall = time.monotonic() - self._wall
        self.seconds = {k: end[k] - self._start[k] for k in end if k in self._start}
        return cpu_percent(self._start, end, self.wall)


def machine_busy_percent(seconds: float = 1.0) -> float:
    """How busy the whole machine is (% of one core) over `seconds`, before we add load."""
    before = machine_busy_seconds()
    time.sleep(seconds)
    return 100 * (machine_busy_seconds() - before) / seconds


def wait_machine_quiet(below: float = 25.0, limit: float = 30.0) -> float:
    """Wait (at most `limit` s) until the whole machine is under `below`% of one core busy, so
    that other work on a shared box disturbs the figures less; returns the last reading."""
    deadline = time.monotonic() + limit
    busy = machine_busy_percent(0.5)
    while busy > below and time.monotonic() < deadline:
        busy = machine_busy_percent(0.5)
    if busy > below:
        print(f"    (the machine is still {busy:.0f}% busy after waiting {limit:g} s: other work is "
              "running, the figures will be disturbed)", flush=True)
    return busy


async def process_quiet(pid: int, below: float = 5.0, window: float = 0.25,
                        limit: float = 15.0) -> None:
    """Wait (at most `limit` s) until process `pid` uses under `below`% of a core over `window`."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        c0, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(window)
        if 100 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0) < below:
            return


def wait_quiet(pids: Iterable[int], machine_limit: float | None = None) -> float | None:
    """Wait until each of `pids` is idle, then, with `machine_limit`, (at most that many s)
    until the whole machine is under 25% of one core busy; that last reading."""
    for pid in pids:
        asyncio.run(process_quiet(pid))
    return None if machine_limit is None else wait_machine_quiet(25.0, machine_limit)


# --- percentiles ----------------------------------------------------------------------------------


def percentiles(values, unit: float = 1.0) -> dict:
    """p50, p99 (nearest rank), max and n of `values`, each divided by `unit` (1e6: ns to ms)."""
    if not len(values):
        return {"p50": None, "p99": None, "max": None, "n": 0}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n, max(1, math.ceil(round(q * n, 6)))) - 1] / unit

    return {"p50": rank(0.5), "p99": rank(0.99), "max": ordered[-1] / unit, "n": n}


# --- py-spy ---------------------------------------------------------------------------------------


class Profiler:
    """py-spy recording process `pid` into `path` (raw collapsed stacks) for at most `seconds`."""

    def __init__(self, pid: int, path: Path, seconds: float = 600) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
             "--duration", str(max(1, int(seconds))), "--rate", "200", "--format", "raw",
             "--output", str(path), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )

    @classmethod
    def start(cls, pid: int, path: Path, seconds: float = 600) -> Profiler | None:
        """A Profiler, or None (said on stderr) when there is no py-spy next to this Python."""
        if not (Path(sys.executable).parent / "py-spy").exists():
            print("    (no py-spy next to this Python; not profiling)", file=sys.stderr)
            return None
        return cls(pid, path, seconds)

    def stop(self) -> None:
        """Stop recording (py-spy writes its output on SIGINT); kill it if it lingers."""
        proc = self.process
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            if proc.returncode not in (0, -signal.SIGINT):
                print(f"    py-spy exited {proc.returncode}: "
                      f"{proc.stderr.read().decode(errors='replace')[-500:]}", file=sys.stderr)
            proc.stderr.close()
            proc.stderr = None  # stopped: a second stop() does nothing


def _function(frame: str) -> str:
    """`func (path:line)` -> `func (file.py)`."""
    if " (" not in frame:
        return frame
    return frame.split(" (")[0] + " (" + frame.split(" (")[-1].rsplit(":", 1)[0].split("/")[-1] + ")"


def _ours(frame: str) -> bool:
    where = frame.rpartition(" (")[2]
    return "services/" in where or "contracts/" in where


def profile_top(path: Path, n: int = 12, by_line: bool = False) -> dict:
    """From py-spy's raw collapsed stacks: the top innermost frames by samples (by function, or
    by source line), and this repository's functions by samples anywhere in the stack; each
    with its % of all samples. {} if there is no profile."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    if not path.exists():
        return {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = stack.split(";")
        own[frames[-1] if by_line else _function(frames[-1])] += count
        for fn in {_function(f) for f in frames if _ours(f)}:
            inclusive[fn] += count

    def share(c: int) -> float:
        return round(100 * c / total, 1) if total else 0.0

    return {"samples": total,
            "own": [(k, share(v)) for k, v in own.most_common(n)],
            "inclusive": [(k, share(v)) for k, v in inclusive.most_common(n)]}


# --- the report -----------------------------------------------------------------------------------


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def fmt_stats(stats: dict, *keys: str) -> str:
    """e.g. "1.20 / 3.40" for keys p50, p99 (the default)."""
    return " / ".join(fmt(stats[k]) for k in keys or ("p50", "p99"))


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("ok" if ok else "MISSED")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  " + "  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  " + "  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def print_figures(figures: dict[str, dict], targets: str) -> None:
    """Each figure's name, then its values as key=value lines of at most 100 characters."""
    for name, values in figures.items():
        print(name)
        line = " "
        for k, v in values.items():
            item = f" {k}={v:.2f}" if isinstance(v, float) else f" {k}={v}"
            if len(line) + len(item) > 100:
                print(line)
                line = " "
            line += item
        print(line)
    print(f"targets: {targets}")
