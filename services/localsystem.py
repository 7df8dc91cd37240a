"""The whole system on one machine: nats-server, room replicas, the ratelimit and context
services, the projector and a gateway as processes.

`make run` uses it with ./data and port 8000; tests and benchmarks with a temp dir and
free ports. Every process is stopped by the PID this object started.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.natsserver import NatsServerProcess, child_env, free_port, stop_process


class ServiceProcess:
    """One service (`python -m <module>`) as a child process with its own log file."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path) -> None:
        self.module = module
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> ServiceProcess:
        log = open(self.log_path, "ab")
        # A session of its own: a terminal's Ctrl-C reaches only the launcher, which stops
        # the services in order.
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (a clean drain), then SIGKILL if it does not exit in time."""
        return stop_process(self.process, timeout)

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait()


@dataclass
class LocalSystem:
    """nats-server + room service replicas + ratelimit + context + projector + gateway, wired
    together on 127.0.0.1."""

    data_dir: Path
    partitions: int = 16
    room_replicas: int = 1
    nats_port: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    nats: NatsServerProcess | None = field(default=None, init=False)
    rooms: list[ServiceProcess] = field(default_factory=list, init=False)
    gateway: ServiceProcess | None = field(default=None, init=False)
    projector: ServiceProcess | None = field(default=None, init=False)
    ratelimit: ServiceProcess | None = field(default=None, init=False)
    context: ServiceProcess | None = field(default=None, init=False)
    upload: ServiceProcess | None = field(default=None, init=False)

    @property
    def read_db(self) -> Path:
        return self.data_dir / "read.db"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        assert self.nats is not None
        env = child_env(
            nats_url=self.nats.url,
            partitions=self.partitions,
            host=self.host,
            port=self.port,
            read_db=self.read_db,
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> LocalSystem:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        self.nats = NatsServerProcess(
            self.data_dir / "nats", partitions=self.partitions, port=self.nats_port
        ).start()
        for _ in range(self.room_replicas):
            self.start_room()
        self.ratelimit = self.start_ratelimit()
        self.context = self.start_context()
        self.projector = self.start_projector()
        self.upload = self.start_upload()
        self.gateway = ServiceProcess(
            "services.gateway", self.env(), self.data_dir / "gateway.log"
        ).start()
        self.wait_healthy(timeout)
        return self

    def start_room(self) -> ServiceProcess:
        index = len(self.rooms)
        room = ServiceProcess("services.room", self.env(), self.data_dir / f"room-{index}.log")
        self.rooms.append(room.start())
        return room

    def start_ratelimit(self) -> ServiceProcess:
        """One ratelimit process: per-IP limiters (memory only) and per-user AI quotas."""
        self.ratelimit = ServiceProcess(
            "services.ratelimit", self.env(), self.data_dir / "ratelimit.log"
        ).start()
        return self.ratelimit

    def start_context(self) -> ServiceProcess:
        """One context process: per-user AI contexts; it calls the AI provider (Gemini with
        GEMINI_API_KEY, else the offline provider)."""
        self.context = ServiceProcess(
            "services.context", self.env(), self.data_dir / "context.log"
        ).start()
        return self.context

    def start_upload(self) -> ServiceProcess:
        """One upload process: per-upload objects; the bytes are in the uploads bucket."""
        self.upload = ServiceProcess(
            "services.upload", self.env(), self.data_dir / "upload.log"
        ).start()
        return self.upload

    def start_projector(self) -> ServiceProcess:
        self.projector = ServiceProcess(
            "services.projector", self.env(), self.data_dir / "projector.log"
        ).start()
        return self.projector

    def wait_healthy(self, timeout: float) -> None:
        """Wait until the gateway answers /healthz (or a service died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for service in self.services():
                if not service.alive():
                    raise RuntimeError(f"{service.module} exited; see {service.log_path}")
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"gateway not healthy on {self.base_url} after {timeout}s")

    def services(self) -> list[ServiceProcess]:
        return [
            s
            for s in (self.gateway, self.projector, self.context, self.ratelimit, self.upload, *self.rooms)
            if s is not None
        ]

    def alive(self) -> bool:
        return all(s.alive() for s in self.services())

    def stop(self) -> None:
        """Services first (they drain), then nats-server."""
        for service in self.services():
            service.stop()
        if self.nats is not None:
            self.nats.stop()

    def logs(self) -> str:
        parts = []
        for path in sorted(self.data_dir.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)
