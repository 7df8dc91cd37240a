"""What every benchmark measures with: percentiles and CPU time from /proc, and the few
things each system benchmark does around its measurements (descriptor limit, waiting for a
quiet machine, stopping what it started)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    """The q-th percentile by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy so far, any process (from /proc/stat). Steal time,
    when the hypervisor ran someone else, is not ours and is not counted."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    steal = values[7] if len(values) > 7 else 0
    return (sum(values[:8]) - idle - steal) / CLK_TCK


def write_figures(path: Path, report: dict) -> None:
    """Write a benchmark's figures as JSON (`--json PATH`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"figures written to {path}")


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


def raise_fd_limit(want: int) -> None:
    """Enough descriptors for every socket; children (the gateway too) inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def shut_down(stops: list[Callable[[], object]], tmp: str | Path, keep: bool) -> None:
    """Run `stops` in order (a second Ctrl-C must not skip them), then remove the benchmark's
    temp dir, unless it is to be kept."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for stop in stops:
            stop()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if keep:
        print(f"kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
