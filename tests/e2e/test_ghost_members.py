"""Ghost members: a gateway that dies takes its members with it. Its members in every room
leave (a quit broadcast) within a bound, seen by the sockets of the other gateway."""

from __future__ import annotations

import signal
import time

import httpx

from services.localsystem import LocalSystem, ServiceProcess
from services.runtime.natsserver import free_port
from tests.conftest import running
from tests.e2e.chat_clients import ChatClient
from tests.support import eventually

GATEWAY_TTL = 2  # seconds: a dead gateway's heartbeat expires after this
BOUND = GATEWAY_TTL + 6  # heartbeat expiry, the sweep, the drops: well within this


async def test_members_of_a_killed_gateway_leave_every_room(tmp_path):
    env = {"DURACHAT_GATEWAY_TTL": str(GATEWAY_TTL), "DURACHAT_GATEWAY_SWEEP_EVERY": "30"}
    with running(LocalSystem(tmp_path, partitions=16, extra_env=env)) as system:
        # A second gateway on the same system.
        port = free_port()
        doomed = ServiceProcess(
            "services.gateway", {**system.env(), "DURACHAT_PORT": str(port)},
            tmp_path / "gateway-2.log",
        ).start()
        doomed_url = f"ws://127.0.0.1:{port}"
        await eventually(lambda: _answers(port), 20, "the second gateway")
        rooms = ["ghost-a", "ghost-b", "ghost-c"]
        try:
            # On the surviving gateway, a watcher in each room; on the doomed one, a
            # member in each room (and one more in the first).
            watchers = {}
            for room in rooms:
                watchers[room] = await ChatClient.connect(system.ws_url, room)
                await watchers[room].join(f"watcher-{room}")
            ghosts = []
            for room, name in [*((r, f"ghost-{r}") for r in rooms), (rooms[0], "ghost-extra")]:
                client = await ChatClient.connect(doomed_url, room)
                await client.join(name)
                ghosts.append((room, name))
            for room, name in ghosts:
                await watchers[room].recv_until(lambda f, name=name: f.get("joined") == name)

            # The doomed gateway dies without a word.
            doomed.kill()
            killed = time.monotonic()

            # Every watcher sees each ghost of its room quit, within the bound.
            for room, name in ghosts:
                remaining = BOUND - (time.monotonic() - killed)
                await watchers[room].recv_until(
                    lambda f, name=name: f.get("quit") == name, timeout=max(remaining, 0.1)
                )
            # The room's state agrees: a newcomer sees only the watcher.
            newcomer = await ChatClient.connect(system.ws_url, rooms[0])
            frames = await newcomer.join("newcomer")
            present = [f["joined"] for f in frames if "joined" in f]
            assert sorted(present) == sorted([f"watcher-{rooms[0]}", "newcomer"])
        finally:
            doomed.kill()


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def test_a_gateway_paused_past_its_ttl_gets_its_members_back(tmp_path):
    env = {"DURACHAT_GATEWAY_TTL": str(GATEWAY_TTL), "DURACHAT_GATEWAY_SWEEP_EVERY": "30"}
    with running(LocalSystem(tmp_path, partitions=16, extra_env=env)) as system:
        port = free_port()
        paused = ServiceProcess(
            "services.gateway", {**system.env(), "DURACHAT_PORT": str(port)},
            tmp_path / "gateway-2.log",
        ).start()
        try:
            await eventually(lambda: _answers(port), 20, "the second gateway")
            watcher = await ChatClient.connect(system.ws_url, "paused-room")
            await watcher.join("watcher")
            member = await ChatClient.connect(f"ws://127.0.0.1:{port}", "paused-room")
            await member.join("sleeper")
            await watcher.recv_until(lambda f: f.get("joined") == "sleeper")

            # The gateway freezes past its heartbeat's TTL: the room drops its member...
            paused.process.send_signal(signal.SIGSTOP)
            await watcher.recv_until(lambda f: f.get("quit") == "sleeper", timeout=BOUND)
            # ...and once it runs again, it joins the member again under a new id.
            paused.process.send_signal(signal.SIGCONT)
            await watcher.recv_until(lambda f: f.get("joined") == "sleeper", timeout=BOUND)
            # The socket never noticed: it still chats, and its member is held by a live
            # gateway (a later sweep does not drop it).
            assert (await member.say("still here"))["message"] == "still here"
            await watcher.recv_until(lambda f: f.get("message") == "still here")
        finally:
            paused.process.send_signal(signal.SIGCONT)
            paused.kill()
