"""`make run` (`python -m services.run`) as a user runs it, as a real process on a temp data dir
and free ports: it keeps the system up when a service dies, leaves nothing behind whatever
stops it, runs one system per data dir, says who holds a taken port, and records where its
NATS is for the replay CLI."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from contracts.keys import subject_token
from contracts.room import GetRoom
from contracts.subjects import ROOM, command_subject
from services.runtime.leases import partition_owners
from services.runtime.natsserver import free_port
from tests.e2e.chat_clients import ChatClient
from tests.support import eventually, eventually_blocking

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie waiting for its parent has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def children(parent: int) -> dict[int, str]:
    """{pid: what it runs} of `parent`'s live child processes, from /proc (whatever the
    launcher recorded): "nats-server" or the service's module ("services.room")."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) != parent or fields[0] == "Z":
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        name = Path(words[0]).name if words else "?"
        found[int(stat.parent.name)] = (
            words[words.index("-m") + 1] if name.startswith("python") and "-m" in words
            else name)
    return found


class Launcher:
    """One `python -m services.run` on `data_dir`, its output in a file beside it."""

    def __init__(self, data_dir: Path, port: int | None = None, replicas: int = 1,
                 **env: str) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.output = data_dir.parent / f"launcher-{uuid.uuid4().hex[:6]}.out"
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith("DURACHAT_") or k == "DURACHAT_RATE_INTERVAL"}
        environ.update(DURACHAT_DATA_DIR=str(data_dir), DURACHAT_PORT=str(self.port),
                       DURACHAT_NATS_PORT="0", DURACHAT_ROOM_REPLICAS=str(replicas), **env)
        with open(self.output, "wb") as out:
            # A session of its own, as a terminal would give it: signals reach it alone.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.run"], cwd=REPO, env=environ, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def run(self) -> dict[str, Any]:
        return json.loads((self.data_dir / "run.json").read_text())

    def children(self) -> dict[int, str]:
        return children(self.process.pid)

    def healthy(self, check: str = "/readyz") -> bool:
        """Whether the gateway says it is ready (or, with `check="/healthz"`, alive)."""
        try:
            return httpx.get(self.base_url + check, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def ready(self, timeout: float = 40.0, check: str = "/readyz") -> Launcher:
        def up() -> bool:
            assert self.process.poll() is None, f"the launcher exited:\n{self.text()}"
            return self.healthy(check)

        eventually_blocking(up, timeout, what=lambda: f"the launcher to be up:\n{self.text()}")
        return self

    def nats_port(self) -> int:
        """nats-server's client port, as its command line says."""
        (pid,) = [p for p, what in self.children().items() if what == "nats-server"]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        return int(argv[argv.index("-p") + 1])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """`ROOM_REPLICAS=3 make run` on a temp data dir, for the module."""
    launcher = Launcher(tmp_path_factory.mktemp("launcher") / "data", replicas=3)
    try:
        yield launcher.ready()
    finally:
        launcher.stop()


def replay(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess:
    """The replay CLI with no --nats/--db and no DURACHAT_* settings but the data dir."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DURACHAT_")}
    return subprocess.run(
        [sys.executable, "-m", "services.replay", *args], capture_output=True, text=True,
        timeout=60, cwd=REPO, env={**environ, "COLUMNS": "250",
                                   "DURACHAT_DATA_DIR": str(data_dir), **env},
    )


async def spread(url: str, pids: list[int]) -> collections.Counter:
    """Wait until the room partitions are leased by exactly the replicas with `pids`, evenly."""
    nc = await nats.connect(url)
    try:
        async def even() -> collections.Counter | None:
            owners = await partition_owners(nc, ROOM)
            counts = collections.Counter(
                pid for owner in owners.values() for pid in pids if f"-{pid}-" in owner)
            if sum(counts.values()) == 16 and len(counts) == len(pids) and \
                    max(counts.values()) - min(counts.values()) <= 1:
                return counts
            return None

        return await eventually(even, 30, what="the partitions spread over the replicas")
    finally:
        await nc.close()


async def rooms_owned_by(url: str, pid: int, want: int, others: int) -> list[str]:
    """`want` new room names whose partitions replica `pid` owns, then `others` it does not."""
    nc = await nats.connect(url)
    try:
        owners = await partition_owners(nc, ROOM)
        mine: list[str] = []
        theirs: list[str] = []
        while len(mine) < want or len(theirs) < others:
            room = f"kill-{uuid.uuid4().hex[:8]}"
            sub = await nc.subscribe(f"cmd.{ROOM}.*.{subject_token(room)}")
            await nc.request(command_subject(ROOM, room), GetRoom().model_dump_json().encode(),
                             timeout=15)
            partition = int((await sub.next_msg(timeout=5)).subject.split(".")[2])
            await sub.unsubscribe()
            (mine if f"-{pid}-" in owners[partition] else theirs).append(room)
        return mine[:want] + theirs[:others]
    finally:
        await nc.close()


async def test_a_killed_room_replica_is_restarted_and_no_acknowledged_message_is_lost(launched):
    before = launched.children()
    replicas = [pid for pid, what in before.items() if what == "services.room"]
    assert len(replicas) == 3
    url = f"nats://127.0.0.1:{launched.nats_port()}"
    await spread(url, replicas)
    victim = replicas[1]
    rooms = await rooms_owned_by(url, victim, 3, 2)
    clients = []
    for room in rooms:
        client = await ChatClient.connect(launched.ws_url, room)
        await client.join("alice")
        clients.append(client)
    acknowledged: dict[str, list[str]] = {room: [] for room in rooms}

    os.kill(victim, signal.SIGKILL)
    for n in range(3):  # chat goes on: every post is acknowledged (the gateway retries)
        for room, client in zip(rooms, clients):
            text = f"after the kill {n}"
            echo = await client.say(text, timeout=20)
            assert echo.get("message") == text, echo
            acknowledged[room].append(text)

    def restarted() -> dict[int, str] | None:
        assert launched.process.poll() is None, f"the launcher exited:\n{launched.text()}"
        now = launched.children()
        rooms_now = [pid for pid, what in now.items() if what == "services.room"]
        return now if len(rooms_now) == 3 and victim not in rooms_now else None

    now = await eventually(restarted, 20, what=lambda: f"the replica back:\n{launched.text()}")
    assert "exited (killed by SIGKILL); restarting it in" in launched.text()
    assert "(restart 1)" in launched.text()
    assert {p: w for p, w in before.items() if p != victim}.items() <= now.items()  # the rest ran on
    recorded = launched.run()["pids"]
    assert sorted(recorded.values()) == sorted(now)  # run.json names every process
    # The new replica takes its share again.
    await spread(url, [pid for pid, what in now.items() if what == "services.room"])
    for client in clients:
        await client.close()
    async with httpx.AsyncClient(base_url=launched.base_url) as http:
        for room, said in acknowledged.items():  # each acknowledged message stored, once
            async def stored(room=room, said=said) -> list[str] | None:
                page = (await http.get(f"/api/rooms/{room}/messages",
                                       params={"limit": 100})).json()
                texts = [m["text"] for m in page["messages"] if m["kind"] == "user"]
                return texts if len(texts) >= len(said) else None

            assert sorted(await eventually(stored, 20)) == sorted(said)


def test_a_second_launcher_on_the_same_data_dir_refuses_and_touches_nothing(launched):
    processes = launched.children()
    files = sorted(str(p.relative_to(launched.data_dir)) for p in launched.data_dir.rglob("*")
                   if "jetstream" not in p.parts)
    launcher_log = launched.data_dir / "logs" / "launcher.log"
    logs_before = launcher_log.read_text() if launcher_log.exists() else None
    second = Launcher(launched.data_dir)
    try:
        second.process.wait(20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a second launcher started on the same data dir:\n{second.text()}")
    finally:
        second.stop()
    assert second.process.returncode == 1
    message = second.text()
    run = launched.run()
    assert f"in use by durachat pid {launched.process.pid}" in message
    assert run["gateway_url"] == launched.base_url and launched.base_url in message
    assert len(message.strip().splitlines()) == 1, message
    assert sorted(str(p.relative_to(launched.data_dir)) for p in launched.data_dir.rglob("*")
                  if "jetstream" not in p.parts) == files
    assert launched.children() == processes
    assert (launcher_log.read_text() if launcher_log.exists() else None) == logs_before
    assert httpx.get(launched.base_url + "/healthz").status_code == 200


def test_a_taken_port_says_which_durachat_holds_it(launched, tmp_path):
    other = Launcher(tmp_path / "other", port=launched.port)
    try:
        other.process.wait(20)
    finally:
        other.stop()
    (gateway,) = [p for p, what in launched.children().items() if what == "services.gateway"]
    assert other.process.returncode == 1
    assert (f"127.0.0.1:{launched.port} is held by durachat pid {gateway}"
            in other.text()), other.text()
    assert f"from data dir {launched.data_dir}" in other.text()
    assert not (tmp_path / "other" / "nats").exists()


async def test_the_replay_cli_finds_the_running_nats_and_exits_by_one_rule(launched):
    room = f"replay-{uuid.uuid4().hex[:6]}"
    client = await ChatClient.connect(launched.ws_url, room)
    await client.join("alice")
    await client.say("found without flags")
    await client.close()

    events = replay("events", room, "--json", data_dir=launched.data_dir)
    assert events.returncode == 0, events.stderr
    assert "found without flags" in events.stdout
    unknown = f"nosuchroom-{uuid.uuid4().hex[:6]}"
    for args in (["events", unknown], ["state", unknown], ["rebuild-room", unknown]):
        result = replay(*args, data_dir=launched.data_dir)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "has no events" in result.stderr, result.stderr
    usage = replay("state", room, "--seq", "-1", data_dir=launched.data_dir)
    assert usage.returncode == 2, usage.stderr
    # A flag still wins over the recorded system; an unreachable NATS says why (exit 3).
    nowhere = f"nats://127.0.0.1:{free_port()}"
    result = replay("--nats", nowhere, "events", room, data_dir=launched.data_dir)
    assert result.returncode == 3, result.stderr
    reason = result.stderr.split(f"cannot reach NATS at {nowhere}:", 1)[1].strip()
    assert reason, result.stderr
    result = replay("events", room, data_dir=launched.data_dir, DURACHAT_NATS_URL=nowhere)
    assert result.returncode == 3 and nowhere in result.stderr, result.stderr  # so does the env


@pytest.mark.parametrize("how", [signal.SIGHUP, signal.SIGKILL, signal.SIGTERM],
                         ids=lambda s: s.name)
def test_the_launcher_leaves_no_process_behind(tmp_path, how):
    launcher = Launcher(tmp_path / "data").ready()
    pids = {what: pid for pid, what in launcher.children().items()}
    assert set(pids) == {"nats-server", "services.room", "services.ratelimit", "services.context",
                         "services.projector", "services.upload", "services.gateway"}
    run_file = tmp_path / "data" / "run.json"
    recorded = json.loads(run_file.read_text()) if run_file.exists() else {}
    try:
        os.kill(launcher.process.pid, how)
        code = launcher.process.wait(30)
        eventually_blocking(
            lambda: all(gone(pid) for pid in pids.values()), 20,
            what=lambda: f"every process gone; left: {[n for n, p in pids.items() if not gone(p)]}")
    finally:
        for pid in pids.values():  # what a failing run left behind: ours, by its PID
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        launcher.stop()
    assert sorted(recorded.get("pids", {}).values()) == sorted(pids.values())  # as recorded
    if how != signal.SIGKILL:
        assert code == 0, launcher.text()
        assert not run_file.exists()


def test_a_restart_right_after_stop_serves_on_the_same_port(tmp_path):
    first = Launcher(tmp_path / "data").ready()
    with httpx.Client(base_url=first.base_url) as http:  # a client: TIME_WAIT on stop
        assert http.get("/healthz").status_code == 200
    first.stop()
    assert first.process.returncode == 0
    started = time.monotonic()
    second = Launcher(tmp_path / "data", port=first.port)
    try:
        second.ready()
        assert time.monotonic() - started < 30
        assert httpx.get(second.base_url + "/healthz").status_code == 200
        # One file per process and run: the run before is kept beside it.
        logs = tmp_path / "data" / "logs"
        assert (logs / "gateway.log.1").exists() and (logs / "gateway.log").exists()
        assert (logs / "gateway.log").read_text().count("gateway (services.gateway) started") == 1
    finally:
        second.stop()


async def test_a_crashing_service_is_given_up_on_and_a_dead_nats_server_comes_back(tmp_path):
    # The ratelimit service refuses this setting at start, every time.
    launcher = Launcher(tmp_path / "data", DURACHAT_QUOTA_DAILY_REQUESTS="-1",
                        DURACHAT_RESTART_LIMIT="2").ready(check="/healthz")
    try:
        await eventually(lambda: "giving up" in launcher.text(), 30, what=launcher.text)
        text = launcher.text()
        assert "ratelimit exited (exit code 1); restarting it in 0.5s (restart 1)" in text
        assert "ratelimit exited (exit code 1) 2 times within 60s; giving up on it" in text
        report = text.split("giving up on it", 1)[1]
        assert "quota_daily_requests" in report  # its own last lines ...
        assert "services.gateway" not in report and "room-0" not in report  # ... only
        assert launcher.run()["given_up"] == ["ratelimit"]
        # The rest keep serving, and readiness says what is missing.
        assert launcher.healthy("/healthz") and not launcher.healthy("/readyz")

        # nats-server killed: restarted on the same port and store; the services reconnect.
        (nats_pid,) = [p for p, what in launcher.children().items() if what == "nats-server"]
        room = f"back-{uuid.uuid4().hex[:6]}"
        client = await ChatClient.connect(launcher.ws_url, room)
        await client.join("alice")
        assert (await client.say("before"))["message"] == "before"
        os.kill(nats_pid, signal.SIGKILL)
        await eventually(lambda: "nats-server is running again" in launcher.text(), 30,
                         what=launcher.text)
        assert "nats-server exited (killed by SIGKILL); restarting it" in launcher.text()
        assert (await client.say("after", timeout=30))["message"] == "after"
        await client.close()
        assert launcher.process.poll() is None
    finally:
        launcher.stop()
