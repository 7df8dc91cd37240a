"""The whole system on one machine: nats-server, room replicas, the ratelimit and context
services, the projector and a gateway as processes.

`make run` uses it with ./data and port 8000; tests and benchmarks with a temp dir and
free ports. Every process is stopped by the PID this object started.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.natsserver import (
    NatsCluster,
    NatsServerProcess,
    NetnsNetwork,
    child_env,
    die_with_parent,
    free_port,
    stop_process,
)

LOG_BOUND = 5 * 1024 * 1024  # bytes a log file may grow to before its older half is dropped
RUN_MARK = "=== "  # starts the line a process's log gets each time it is started
# Seconds a partition lease (and a gateway's heartbeat) lives unrenewed on a cluster: above
# a Raft election (4-9 s, nats-server raft.go) plus leaving a frozen or cut-off node (~6 s of
# pings), so owners ride out their lease bucket's leader election, and a gateway its node's
# loss, without stepping down or being swept; the cost is that a dead room replica's
# partitions (and a dead gateway's members) move only after it.
CLUSTER_LEASE_TTL = 15


def now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def exit_text(code: int | None) -> str:
    """A process's exit as a person reads it: "exit code 1", "killed by SIGKILL"."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def start_log(path: Path, line: str) -> None:
    """Append the line that starts one run of a process to its log (a separator, with time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"\n{RUN_MARK}{now_text()} {line}\n")


def last_lines(path: Path, n: int = 40) -> list[str]:
    """The last `n` lines a process wrote since it was last started (its own log only)."""
    try:
        with open(path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
            text = log.read().decode(errors="replace")
    except OSError:
        return []
    lines = text.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith(RUN_MARK):
            lines = lines[index + 1:]
            break
    return lines[-n:]


def bound_log(path: Path, limit: int = LOG_BOUND) -> bool:
    """Keep `path` under `limit` bytes: past it, its last half is kept (copied to the start,
    the rest cut off; the writer appends, so it writes on after that). True if it was cut."""
    try:
        size = path.stat().st_size
    except OSError:
        return False
    if size <= limit:
        return False
    with open(path, "r+b") as log:
        log.seek(size - limit // 2)
        tail = log.read()
        log.seek(0)
        log.write(f"{RUN_MARK}{now_text()} (older lines dropped: the log is kept under "
                  f"{limit // 1024} KiB)\n".encode())
        log.write(tail)
        log.truncate()
    return True


def rotate_logs(log_dir: Path) -> None:
    """Start a run with fresh logs: each *.log of the run before becomes *.log.1 (replacing
    the one before that), so a log holds one run and at most two runs are kept."""
    for path in log_dir.glob("*.log"):
        shutil.move(path, path.with_name(path.name + ".1"))


class ServiceProcess:
    """One service (`python -m <module>`) as a child process with its own log file."""

    def __init__(
        self, module: str, env: dict[str, str], log_path: Path, name: str | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.module = module
        self.name = name or log_path.stem
        self.env = env
        self.log_path = log_path
        self.pass_fds = tuple(pass_fds)
        self.process: subprocess.Popen | None = None
        self.metrics_url: str | None = None  # where it serves Prometheus metrics
        self.starts = 0
        self.started_at = 0.0

    def start(self) -> ServiceProcess:
        """Start it (again, after it exited), with a separator line in its log."""
        self.starts += 1
        what = "started" if self.starts == 1 else f"restarted (restart {self.starts - 1})"
        start_log(self.log_path, f"{self.name} ({self.module}) {what}")
        log = open(self.log_path, "ab")
        # A session of its own: a terminal's Ctrl-C reaches only the launcher, which stops
        # the services in order. If the launcher dies (even by kill -9), so does the service.
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGKILL),
            pass_fds=self.pass_fds,
        )
        log.close()
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (a clean drain), then SIGKILL if it does not exit in time."""
        return stop_process(self.process, timeout)

    def terminate(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.terminate()

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait()


@dataclass
class LocalSystem:
    """nats-server + room service replicas + ratelimit + context + projector + gateway, wired
    together on 127.0.0.1. Logs are in <data dir>/logs, one file per process and run.

    With `nats_nodes` > 1 NATS is a JetStream cluster of that many nats-server processes
    (<data dir>/nats-N: own store, ports and log); every service is given all their URLs, and
    streams and KV buckets are made with min(3, nodes) replicas. The lease and gateway TTLs
    are then `CLUSTER_LEASE_TTL` (unless extra_env sets them): longer than a Raft election,
    so a lease bucket that changes leader does not make every owner step down
    (docs/ARCHITECTURE.md)."""

    data_dir: Path
    partitions: int = 16
    room_replicas: int = 1
    nats_port: int = 0
    nats_http_port: int = 0
    nats_nodes: int = 1
    # JetStream's fsync (natsconf.py): NATS's 2 min here, as tests and benchmarks want it;
    # the launcher (`make run`) passes its setting, "always" by default.
    sync_interval: str = "default"
    nats_network: NetnsNetwork | None = None  # cluster nodes in network namespaces (drills)
    host: str = "127.0.0.1"
    port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    pass_fds: Sequence[int] = ()  # inherited by every process (the launcher's data dir lock)
    rotate_logs: bool = True  # start() moves the last run's logs to *.log.1 (the launcher did)
    nats: NatsServerProcess | None = field(default=None, init=False)  # the (first) node
    nats_cluster: NatsCluster | None = field(default=None, init=False)
    rooms: list[ServiceProcess] = field(default_factory=list, init=False)
    gateway: ServiceProcess | None = field(default=None, init=False)
    projector: ServiceProcess | None = field(default=None, init=False)
    ratelimit: ServiceProcess | None = field(default=None, init=False)
    context: ServiceProcess | None = field(default=None, init=False)
    rooms_started: int = field(default=0, init=False)
    upload: ServiceProcess | None = field(default=None, init=False)

    @property
    def read_db(self) -> Path:
        return self.data_dir / "read.db"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def nats_servers(self) -> list[NatsServerProcess]:
        """Every nats-server of the system: one, or each node of the cluster."""
        if self.nats_cluster is not None:
            return list(self.nats_cluster.nodes)
        return [self.nats] if self.nats is not None else []

    @property
    def nats_url(self) -> str:
        """Every node's URL, comma-separated, as the services are given it."""
        return ",".join(server.url for server in self.nats_servers)

    @property
    def replicas(self) -> int:
        return min(3, self.nats_nodes)

    def env(self) -> dict[str, str]:
        assert self.nats is not None
        cluster: dict[str, object] = {}
        if self.nats_nodes > 1:
            cluster = {"stream_replicas": self.replicas, "lease_ttl": CLUSTER_LEASE_TTL,
                       "gateway_ttl": CLUSTER_LEASE_TTL}
        env = child_env(
            nats_url=self.nats_url,
            **cluster,
            partitions=self.partitions,
            host=self.host,
            port=self.port,
            read_db=self.read_db,
            data_dir=self.data_dir,  # says whose process it is (`port_holder`)
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0, wait: bool = True) -> LocalSystem:
        """Start every process; with `wait`, until the gateway is healthy (RuntimeError if a
        service exits meanwhile)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        if self.rotate_logs:
            rotate_logs(self.log_dir)
        self.port = self.port or free_port(self.host)
        if self.nats_nodes > 1:
            self.nats_cluster = NatsCluster(
                self.data_dir, self.nats_nodes, partitions=self.partitions,
                sync_interval=self.sync_interval, log_dir=self.log_dir, pass_fds=self.pass_fds,
                ports=[self.nats_port] if self.nats_port else [], network=self.nats_network,
            )
            for node in self.nats_cluster.nodes:
                assert node.log_file is not None
                start_log(node.log_file, f"{node.name} started")
            self.nats = self.nats_cluster.nodes[0]
            self.nats_cluster.start(timeout)
        else:
            nats_log = self.log_dir / "nats-server.log"
            start_log(nats_log, "nats-server started")
            self.nats = NatsServerProcess(
                self.data_dir / "nats", partitions=self.partitions, port=self.nats_port,
                http_port=self.nats_http_port, log_file=nats_log, pass_fds=self.pass_fds,
                sync_interval=self.sync_interval,
            ).start()
        for _ in range(self.room_replicas):
            self.start_room()
        self.ratelimit = self.start_ratelimit()
        self.context = self.start_context()
        self.projector = self.start_projector()
        self.upload = self.start_upload()
        self.gateway = self.service("services.gateway", "gateway").start()
        if wait:
            self.wait_healthy(timeout)
        return self

    def service(self, module: str, name: str) -> ServiceProcess:
        env = self.env()
        if module == "services.gateway":
            metrics_url = f"{self.base_url}/metrics"  # on the gateway's own port
        else:  # its own port, kept across restarts (the env is the process's)
            env.setdefault("DURACHAT_METRICS_PORT", str(free_port(self.host)))
            env.setdefault("DURACHAT_METRICS_HOST", self.host)
            metrics_url = f"http://{self.host}:{env['DURACHAT_METRICS_PORT']}/metrics"
        process = ServiceProcess(module, env, self.log_dir / f"{name}.log", name,
                                 pass_fds=self.pass_fds)
        process.metrics_url = metrics_url
        return process

    def metrics_urls(self) -> dict[str, str]:
        """{process name: the URL it serves Prometheus metrics at}."""
        return {s.name: s.metrics_url for s in self.services() if s.metrics_url}

    def start_room(self) -> ServiceProcess:
        room = self.service("services.room", f"room-{self.rooms_started}")
        self.rooms_started += 1
        self.rooms.append(room.start())
        return room

    def start_ratelimit(self) -> ServiceProcess:
        """One ratelimit process: per-IP limiters (memory only) and per-user AI quotas."""
        self.ratelimit = self.service("services.ratelimit", "ratelimit").start()
        return self.ratelimit

    def start_context(self) -> ServiceProcess:
        """One context process: per-user AI contexts; it calls the AI provider (Gemini with
        GEMINI_API_KEY, else the offline provider)."""
        self.context = self.service("services.context", "context").start()
        return self.context

    def start_upload(self) -> ServiceProcess:
        """One upload process: per-upload objects; the bytes are in the uploads bucket."""
        self.upload = self.service("services.upload", "upload").start()
        return self.upload

    def start_projector(self) -> ServiceProcess:
        self.projector = self.service("services.projector", "projector").start()
        return self.projector

    def healthy(self) -> bool:
        """Whether the gateway says it is ready (/readyz: NATS connected, every partition owned,
        the read store readable). Its answer, not any 200: whatever else took the port (the
        gateway then exits, which `wait_healthy` sees) does not pass for it."""
        try:
            with urllib.request.urlopen(self.base_url + "/readyz", timeout=1) as response:
                body = json.loads(response.read())
                return response.status == 200 and isinstance(body, dict) and body.get("status") == "ready"
        except (OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float) -> None:
        """Wait until the gateway is ready (or a service died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for service in self.services():
                if not service.alive():
                    raise RuntimeError(f"{service.name} exited ({exit_text(service.returncode)});"
                                       f" see {service.log_path}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise TimeoutError(f"gateway not ready on {self.base_url}/readyz after {timeout}s")

    def services(self) -> list[ServiceProcess]:
        return [
            s
            for s in (self.gateway, self.projector, self.context, self.ratelimit, self.upload, *self.rooms)
            if s is not None
        ]

    def pids(self) -> dict[str, int]:
        """{process name: pid} of every process started (nats-server included)."""
        pids = {s.name: s.pid for s in self.services() if s.process is not None}
        for server in self.nats_servers:
            if server.process is not None:
                pids[server.name] = server.pid
        return pids

    def alive(self) -> bool:
        return all(s.alive() for s in self.services())

    def stop(self, timeout: float = 10.0) -> None:
        """Services first, all at once (each drains on SIGTERM; SIGKILL after `timeout`),
        then nats-server."""
        services = self.services()
        for service in services:
            service.terminate()
        deadline = time.monotonic() + timeout
        for service in services:
            service.stop(max(0.1, deadline - time.monotonic()))
        if self.nats_cluster is not None:
            self.nats_cluster.stop()
        elif self.nats is not None:
            self.nats.stop()

    def logs(self) -> str:
        """The end of each process's log of this run."""
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)
