"""`make run`: nats-server and every service (room, ratelimit, context, upload, projector, gateway) as
processes, kept running.

- One system per data dir (./data, DURACHAT_DATA_DIR): the launcher holds an flock on
  <data dir>/durachat.lock for its lifetime (its processes inherit it, so it is free again
  only when the last of them has exited). A second launcher on the same dir refuses at once
  and touches nothing. The running system is described in <data dir>/run.json: the
  launcher's pid, the gateway's and nats-server's URLs, every process's pid; the replay CLI
  finds NATS there.
- A supervisor: a process that exits is restarted (the same ports, the same store), after a
  backoff (0.5 s, doubling to 10 s; back to 0.5 s once it ran for a minute), with one log
  line naming it, how it exited and its restart count. One that exits `restart_limit` times
  within `restart_window` seconds is given up on: its own last log lines are printed and the
  rest keep serving.
- No orphans: SIGINT, SIGTERM and SIGHUP stop the services (they drain), then nats-server.
  Every child has PR_SET_PDEATHSIG (Linux): if the launcher itself is killed, the services
  get SIGKILL and nats-server SIGTERM (it closes its store cleanly).
- Logs in <data dir>/logs: one file per process and run (the run before is kept as *.log.1),
  each kept under 5 MiB; the launcher's own lines also go to logs/launcher.log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import AliasChoices, Field, ValidationError, field_validator

from services.gateway.settings import GatewaySettings
from services.localsystem import (
    LocalSystem,
    ServiceProcess,
    bound_log,
    exit_text,
    last_lines,
    now_text,
    rotate_logs,
    start_log,
)
from services.runtime.natsconf import check_sync_interval
from services.runtime.natsserver import free_port, port_holder, port_is_free

log = logging.getLogger("durachat")

LOCK_FILE = "durachat.lock"
RUN_FILE = "run.json"


class LauncherSettings(GatewaySettings):
    """The gateway's address and the partitions, and what only the launcher decides."""

    data_dir: Path = Field(Path("data"), description="where nats-server, the read store and logs keep data")
    nats_port: int = Field(4222, ge=0, le=65535, description="nats-server's port (another free one if taken)")
    nats_http_port: int = Field(
        0, ge=0, le=65535, description="nats-server's monitoring port (0: a free one)"
    )
    room_replicas: int = Field(
        1, ge=1, le=16, validation_alias=AliasChoices("DURACHAT_ROOM_REPLICAS", "ROOM_REPLICAS"),
        description="room service processes sharing the room partitions",
    )
    nats_nodes: int = Field(
        1, ge=1, le=5, description="nats-server processes: 1, or a JetStream cluster of 3 (or 5) "
        "nodes on this machine, streams and KV buckets at R3",
    )
    nats_sync_interval: str = Field(
        "always", description="how often JetStream fsyncs: 'always' (before every ack), "
        "'default' (NATS's 2 min) or a duration such as '1s' (infra/README.md)",
    )
    restart_limit: int = Field(5, ge=1, description="exits within restart_window that give a process up")

    @field_validator("nats_sync_interval")
    @classmethod
    def _sync_interval(cls, value: str) -> str:
        return check_sync_interval(value)

    @field_validator("nats_nodes")
    @classmethod
    def _nodes(cls, value: int) -> int:
        if value == 2:
            raise ValueError("2 nodes have no majority when one is down; use 1 or 3")
        return value
    restart_window: float = Field(60.0, gt=0, description="seconds over which exits are counted")


class Refused(Exception):
    """The launcher cannot start; the message says why and what to do (exit code 1)."""


# --- one system per data dir --------------------------------------------------------------------


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take the data dir's lock (held while the returned file stays open), or Refused naming
    the system that holds it. Creates nothing but the data dir and the lock file."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(data_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise Refused(f"{data_dir} is in use by {running_system(data_dir)}; stop it first, "
                      "or give this one another DURACHAT_DATA_DIR") from None
    return lock


def read_run_file(data_dir: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((data_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; only its parent has not collected it yet
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def running_system(data_dir: Path) -> str:
    """The system that holds `data_dir`'s lock, as its run.json describes it."""
    run = read_run_file(data_dir)
    if run is None:
        return "another durachat launcher (it has not described itself in run.json yet)"
    pid = run.get("pid")
    text = f"durachat pid {pid} ({run.get('gateway_url')}, NATS {run.get('nats_url')})"
    if isinstance(pid, int) and not pid_alive(pid):
        text += ": that launcher is gone, its processes are still stopping"
    return text


def write_run_file(data_dir: Path, info: dict[str, Any]) -> None:
    """Replace run.json in one rename, so a reader never sees half of it."""
    path = data_dir / RUN_FILE
    temporary = path.with_name(f".{RUN_FILE}.{os.getpid()}")
    temporary.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(temporary, path)


def check_port(port: int, host: str, setting: str) -> None:
    if not port_is_free(port, host):
        holder = port_holder(port, host)
        by = f"held by {holder}" if holder else "in use"
        raise Refused(f"{host}:{port} is {by}; set {setting} to another port")


# --- the supervisor -----------------------------------------------------------------------------


@dataclass
class Watched:
    """What the supervisor knows of one process: its recent exits and when it may restart."""

    name: str
    exits: list[float] = field(default_factory=list)  # monotonic times
    restart_at: float | None = None
    given_up: bool = False
    backoff: float = 0.0


BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
STABLE_AFTER = 60.0  # s of running that resets the backoff


class Supervisor:
    """Keeps a LocalSystem's processes running (see the module's docstring)."""

    def __init__(self, system: LocalSystem, settings: LauncherSettings, on_change) -> None:
        self.system = system
        self.limit = settings.restart_limit
        self.window = settings.restart_window
        self.on_change = on_change
        self.watched: dict[str, Watched] = {}
        self.last_bound = 0.0

    def state(self, name: str) -> Watched:
        return self.watched.setdefault(name, Watched(name))

    def given_up(self) -> list[str]:
        return sorted(w.name for w in self.watched.values() if w.given_up)

    def poll(self) -> None:
        """One round: notice exits, restart what is due, keep the logs bounded."""
        now = time.monotonic()
        for nats in self.system.nats_servers:
            if not nats.alive():
                self.exited(nats.name, nats.process.returncode if nats.process else None,
                            nats.log_file, now)
        for service in self.system.services():
            if not service.alive():
                self.exited(service.name, service.returncode, service.log_path, now,
                            ran=now - service.started_at)
        for state in self.watched.values():
            if state.restart_at is not None and now >= state.restart_at:
                state.restart_at = None
                self.restart(state)
        if now - self.last_bound > 5.0:
            self.last_bound = now
            for path in self.system.log_dir.glob("*.log"):
                bound_log(path)

    def exited(self, name: str, code: int | None, log_path: Path | None, now: float,
               ran: float = 0.0) -> None:
        state = self.state(name)
        if state.restart_at is not None or state.given_up:
            return
        state.exits = [t for t in state.exits if now - t < self.window] + [now]
        restarts = len(state.exits) - 1
        if len(state.exits) >= self.limit:
            state.given_up = True
            lines = last_lines(log_path) if log_path else []
            log.error(
                "%s exited (%s) %d times within %gs; giving up on it (the rest keep running). "
                "Its last lines (%s):\n%s", name, exit_text(code), len(state.exits), self.window,
                log_path, "\n".join(f"  | {line}" for line in lines) or "  (none)",
            )
            self.on_change()
            return
        state.backoff = BACKOFF_FIRST if ran >= STABLE_AFTER or not state.backoff \
            else min(BACKOFF_MAX, state.backoff * 2)
        state.restart_at = now + state.backoff
        log.warning("%s exited (%s); restarting it in %.1fs (restart %d)", name, exit_text(code),
                    state.backoff, restarts + 1)

    def restart(self, state: Watched) -> None:
        servers = {server.name: server for server in self.system.nats_servers}
        if state.name in servers:
            nats = servers[state.name]
            if nats.log_file is not None:
                start_log(nats.log_file, f"{nats.name} restarted")
            try:
                nats.start()  # the same ports and store: the services reconnect by themselves
            except (RuntimeError, TimeoutError, OSError) as exc:
                log.error("%s did not come back: %s", nats.name, exc)
                self.exited(nats.name, nats.process.returncode if nats.process else None,
                            nats.log_file, time.monotonic())
                return
        else:
            service = self.service(state.name)
            service.start()
        log.info("%s is running again (restart %d)", state.name, len(state.exits))
        self.on_change()

    def service(self, name: str) -> ServiceProcess:
        (service,) = [s for s in self.system.services() if s.name == name]
        return service


# --- the launcher ---------------------------------------------------------------------------------


def setup_logging(log_dir: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_dir is not None:
        handlers.append(logging.FileHandler(log_dir / "launcher.log"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        handlers=handlers, force=True)


def main() -> None:
    setup_logging()
    try:
        settings = LauncherSettings()
    except ValidationError as exc:  # one line per bad setting, no traceback
        sys.exit("durachat: " + "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()))
    try:
        sys.exit(launch(settings))
    except Refused as exc:
        sys.exit(f"durachat: {exc}")


def launch(settings: LauncherSettings) -> int:
    data_dir = settings.data_dir.resolve()
    lock = lock_data_dir(data_dir)  # first of all: a second launcher touches nothing
    try:
        return run_system(settings, data_dir, lock)
    finally:
        with contextlib.suppress(OSError):
            (data_dir / RUN_FILE).unlink()
        lock.close()


def run_system(settings: LauncherSettings, data_dir: Path, lock: IO[str]) -> int:
    check_port(settings.port, settings.host, "DURACHAT_PORT")
    nats_port = settings.nats_port
    if nats_port and not port_is_free(nats_port):
        holder = port_holder(nats_port)
        nats_port = free_port()
        log.info("NATS port %d is %s; nats-server listens on %d instead", settings.nats_port,
                 f"held by {holder}" if holder else "in use", nats_port)
    if settings.nats_http_port:
        check_port(settings.nats_http_port, "127.0.0.1", "DURACHAT_NATS_HTTP_PORT")

    stop = {"signal": 0}

    def request_stop(signum, frame) -> None:
        stop["signal"] = stop["signal"] or signum

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, request_stop)

    log_dir = data_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    rotate_logs(log_dir)
    setup_logging(log_dir)
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    system = LocalSystem(
        data_dir,
        partitions=settings.partitions,
        room_replicas=settings.room_replicas,
        nats_port=nats_port,
        nats_http_port=settings.nats_http_port,
        nats_nodes=settings.nats_nodes,
        sync_interval=settings.nats_sync_interval,
        host=settings.host,
        port=settings.port,
        pass_fds=(lock.fileno(),),
        rotate_logs=False,
    )
    started = time.monotonic()
    started_at = now_text()
    state = {"ready": False}

    def describe() -> None:
        assert system.nats is not None
        write_run_file(data_dir, {
            "pid": os.getpid(),
            "data_dir": str(data_dir),
            "started_at": started_at,
            "ready": state["ready"],
            "gateway_url": system.base_url,
            "nats_url": system.nats_url,
            "nats_monitoring_url": ",".join(n.monitoring_url for n in system.nats_servers),
            "read_db": str(system.read_db),
            "pids": system.pids(),
            "metrics": system.metrics_urls(),
            "given_up": supervisor.given_up(),
        })

    supervisor = Supervisor(system, settings, describe)
    try:
        try:
            system.start(wait=False)
        except (RuntimeError, TimeoutError) as exc:
            nats_log = log_dir / ("nats-server.log" if settings.nats_nodes == 1 else "nats-1.log")
            log.error("durachat could not start: %s. The last lines of %s:\n%s", exc, nats_log,
                      "\n".join(f"  | {line}" for line in last_lines(nats_log)))
            return 1
        describe()
        assert system.nats is not None
        for server in system.nats_servers:
            log.info("%s %s (monitoring %s)", server.name, server.url, server.monitoring_url)
        log.info("data in %s", data_dir)
        while not stop["signal"]:
            supervisor.poll()
            if not state["ready"] and system.healthy():
                state["ready"] = True
                describe()
                log.info("durachat is up in %.1fs: %s  (logs in %s; Ctrl-C stops it)",
                         time.monotonic() - started, system.base_url, system.log_dir)
                log.info("metrics (Prometheus text): %s", "  ".join(
                    f"{name} {url}" for name, url in system.metrics_urls().items()))
            time.sleep(0.1)  # a supervisor's poll: notice a signal or a process that exited
        log.info("%s: stopping", signal.Signals(stop["signal"]).name)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # stopping: a second signal must not cut it
        system.stop()
        log.info("durachat stopped")
    return 0


if __name__ == "__main__":
    main()
