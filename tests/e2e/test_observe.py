"""See inside a running system: every process's /metrics moves with known traffic (and never
names a room), and the live view CLI (partitions, objects, inspect, top) shows what runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.localsystem import LocalSystem
from tests.e2e.chat_clients import joined
from tests.support import eventually

pytestmark = pytest.mark.e2e


def scrape(url: str) -> tuple[str, dict[tuple[str, tuple], float]]:
    """The metrics text at `url`, and {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))


def replay(system: LocalSystem, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DURACHAT_NATS_URL": system.nats.url, "DURACHAT_READ_DB": str(system.read_db)}
    return subprocess.run([sys.executable, "-m", "services.replay", *args], env=env,
                          capture_output=True, text=True, timeout=60)


async def test_every_process_serves_metrics_that_follow_the_traffic(system: LocalSystem, room_name):
    urls = system.metrics_urls()
    assert set(urls) == {"gateway", "projector", "context", "ratelimit", "upload", "room-0"}
    before = {name: scrape(url)[1] for name, url in urls.items()}
    for name, url in urls.items():
        text, samples = scrape(url)
        assert "durachat_" in text, name
        assert "process_cpu_seconds_total" in text, name  # the process collector too
        assert value(samples, "durachat_nats_connected") == 1, name

    alice, bob = await joined(system, room_name, "alice", "bob")
    for i in range(5):
        await alice.say(f"hello {i}")
    await bob.recv_until(lambda f: f.get("message") == "hello 4")

    after = {name: scrape(url)[1] for name, url in urls.items()}
    assert value(after["gateway"], "durachat_nats_messages_total", direction="out") \
        > value(before["gateway"], "durachat_nats_messages_total", direction="out")
    gateway, room = after["gateway"], after["room-0"]
    # Two name frames and five messages, each frame ok, each through the limiter.
    assert value(gateway, "durachat_ws_frames_total", outcome="ok") \
        - value(before["gateway"], "durachat_ws_frames_total", outcome="ok") == 7
    assert value(gateway, "durachat_ws_connections") == value(before["gateway"], "durachat_ws_connections") + 2
    # Each message was broadcast to the two sockets.
    assert value(gateway, "durachat_broadcast_sockets_count") \
        - value(before["gateway"], "durachat_broadcast_sockets_count") >= 5
    # The room service: the object is resident, its commands answered ok, one commit per batch.
    assert value(room, "durachat_objects_resident", kind="room") >= 1
    ok = value(room, "durachat_command_seconds_count", kind="room", outcome="ok") \
        - value(before["room-0"], "durachat_command_seconds_count", kind="room", outcome="ok")
    assert ok >= 7  # GetRoom, JoinRoom x2, PostMessage x5 (at least)
    commits = value(room, "durachat_commit_batch_commands_count", kind="room") \
        - value(before["room-0"], "durachat_commit_batch_commands_count", kind="room")
    assert 1 <= commits <= ok
    assert value(room, "durachat_object_loads_total", kind="room") >= 1
    assert value(room, "durachat_partitions_owned", kind="room") == system.partitions
    assert value(room, "durachat_lease_moves_total", kind="room", event="acquired") >= system.partitions
    assert value(room, "durachat_lease_renew_seconds_count", kind="room") >= 1

    def projected() -> bool:
        now = scrape(urls["projector"])[1]
        return value(now, "durachat_projector_commits_total") \
            - value(before["projector"], "durachat_projector_commits_total") >= 5
    await eventually(projected, 10, "the projector counts the commits it applied")
    assert value(scrape(urls["projector"])[1], "durachat_projector_lag_messages") == 0

    # Labels are bounded: no process names the room.
    for name, url in urls.items():
        assert room_name not in scrape(url)[0], name
    for client in (alice, bob):
        await client.close()
    await eventually(lambda: value(scrape(urls["gateway"])[1], "durachat_ws_connections")
                     == value(before["gateway"], "durachat_ws_connections"), 10, "sockets gauge back")


async def test_the_micro_protocol_says_where_metrics_are(system: LocalSystem):
    import nats

    nc = await nats.connect(system.nats.url)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SRV.INFO", b"", reply=inbox)
        infos = []
        try:
            while True:
                infos.append(json.loads((await sub.next_msg(timeout=0.5)).data))
        except nats.errors.TimeoutError:
            pass
    finally:
        await nc.close()
    urls = {info["metadata"].get("metrics") for info in infos}
    assert set(system.metrics_urls().values()) <= urls


async def srv(nc, subject: str) -> list[dict]:
    """Every answer to a `$SRV` request within half a second."""
    import nats

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    answers = []
    try:
        while True:
            answers.append(json.loads((await sub.next_msg(timeout=0.5)).data))
    except nats.errors.TimeoutError:
        pass
    await sub.unsubscribe()
    return answers


def endpoint(answers: list[dict], name: str) -> dict:
    """`name`'s statistics summed over the replicas that answered."""
    found = [e for a in answers for e in a["endpoints"] if e["name"] == name]
    assert found, f"no endpoint {name} in {[e['name'] for a in answers for e in a['endpoints']]}"
    return {k: sum(e[k] for e in found) for k in ("num_requests", "num_errors", "processing_time")} \
        | {"last_error": found[-1]["last_error"], "average": found[-1]["average_processing_time"]}


async def test_srv_stats_counts_the_commands_each_service_answered(system: LocalSystem, room_name):
    """`$SRV.STATS` as `nats micro stats` reads it: per endpoint (a kind's commands, its admin
    views, the gateway's fan-out, the projector's streams) the requests, errors and
    processing time (ns) of the traffic since the process started."""
    import nats

    from contracts.subjects import command_subject

    nc = await nats.connect(system.nats.url)
    try:
        before_room = await srv(nc, "$SRV.STATS.durachat-room")
        before_gateway = await srv(nc, "$SRV.STATS.durachat-gateway")
        before_projector = await srv(nc, "$SRV.STATS.durachat-projector")
        alice, bob = await joined(system, room_name, "alice", "bob")
        for i in range(5):
            await alice.say(f"counted {i}")
        await bob.recv_until(lambda f: f.get("message") == "counted 4")
        # One command the room refuses (not JSON of any command), and one admin view.
        refused = await nc.request(command_subject("room", room_name), b"not a command", timeout=5)
        assert b'"bad_request"' in refused.data
        await nc.request("durachat.admin.room", json.dumps({"op": "objects"}).encode(), timeout=5)

        after_room = await srv(nc, "$SRV.STATS.durachat-room")
        room, was = endpoint(after_room, "room"), endpoint(before_room, "room")
        # GetRoom and JoinRoom for each socket, five PostMessages, the refused one.
        assert room["num_requests"] - was["num_requests"] >= 10
        assert room["num_errors"] - was["num_errors"] == 1
        assert room["last_error"].startswith("bad_request: ")
        assert room["processing_time"] > was["processing_time"]
        assert 0 < room["average"] <= room["processing_time"]
        admin, was = endpoint(after_room, "admin-room"), endpoint(before_room, "admin-room")
        assert admin["num_requests"] - was["num_requests"] == 1 and admin["num_errors"] == was["num_errors"]
        (info,) = await srv(nc, "$SRV.INFO.durachat-room")
        assert {"room", "admin-room"} <= {e["name"] for e in info["endpoints"]}
        assert {"cmd.room.*", "durachat.admin.room"} <= {e["subject"] for e in info["endpoints"]}

        fanout = endpoint(await srv(nc, "$SRV.STATS.durachat-gateway"), "fanout")
        assert fanout["num_requests"] - endpoint(before_gateway, "fanout")["num_requests"] >= 7

        async def projected() -> bool:
            now = endpoint(await srv(nc, "$SRV.STATS.durachat-projector"), "project-EVT_ROOM")
            return now["num_requests"] - endpoint(before_projector, "project-EVT_ROOM")["num_requests"] >= 7
        await eventually(projected, 10, "the projector counts the commits it projected")
        for client in (alice, bob):
            await client.close()
    finally:
        await nc.close()


async def test_live_view_cli(system: LocalSystem, room_name):
    (alice,) = await joined(system, room_name, "alice")
    await alice.say("look inside")

    parts = replay(system, "partitions", "--json")
    assert parts.returncode == 0, parts.stderr
    rows = [json.loads(line) for line in parts.stdout.splitlines()]
    room_rows = [r for r in rows if r["kind"] == "room"]
    assert sorted(r["partition"] for r in room_rows) == list(range(system.partitions))
    assert all(r["owner"] and r["revision"] > 0 for r in room_rows)
    assert {r["kind"] for r in rows} == {"room", "context", "limiter", "quota", "upload"}

    objects = replay(system, "objects", "room", "--json")
    assert objects.returncode == 0, objects.stderr
    listed = [json.loads(line) for line in objects.stdout.splitlines()]
    (mine,) = [o for o in listed if o["key"] == room_name]
    assert mine["version"] >= 2 and mine["mailbox"] == 0 and mine["replica"]

    inspected = replay(system, "inspect", "room", room_name, "--json")
    assert inspected.returncode == 0, inspected.stderr
    view = json.loads(inspected.stdout)
    assert view["resident"] and view["owner"] == mine["replica"]
    assert view["partition"] == mine["partition"] and view["version"] == mine["version"]
    assert "look inside" in json.dumps(view["state"])
    assert view["last_commit"]["sequence"] >= 1

    # A human table too, and an unknown kind is a clear error.
    table = replay(system, "inspect", "room", room_name)
    assert table.returncode == 0 and room_name in table.stdout and "resident" in table.stdout
    bad = replay(system, "objects", "nosuchkind")
    assert bad.returncode == 1 and "nosuchkind" in bad.stderr

    top = replay(system, "top", "--once")
    assert top.returncode == 0, top.stderr
    assert "room" in top.stdout and "gateway" in top.stdout and "projector" in top.stdout
    await alice.close()


async def test_inspect_watch_refreshes_until_stopped(system: LocalSystem, room_name):
    """`inspect --watch` reads the object again each interval (a message posted meanwhile
    shows in a later view) until Ctrl-C; `--count N` stops after N views."""
    import asyncio
    import signal

    (alice,) = await joined(system, room_name, "alice")
    await alice.say("before watching")
    env = {**os.environ, "DURACHAT_NATS_URL": system.nats.url, "DURACHAT_READ_DB": str(system.read_db)}
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.replay", "inspect", "room", room_name, "--watch", "--json",
        "--interval", "0.2", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert watcher.stdout is not None
        first = json.loads(await asyncio.wait_for(watcher.stdout.readline(), 30))
        assert first["resident"] and "before watching" in json.dumps(first["state"])
        await alice.say("while watching")
        views = 1
        while True:
            view = json.loads(await asyncio.wait_for(watcher.stdout.readline(), 10))
            views += 1
            if "while watching" in json.dumps(view["state"]):
                break
            assert views < 100, "the post never showed in a refreshed view"
        assert view["version"] > first["version"]
        watcher.send_signal(signal.SIGINT)  # Ctrl-C
        assert await asyncio.wait_for(watcher.wait(), 10) == 130
    finally:
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()

    bounded = replay(system, "inspect", "room", room_name, "--watch", "--count", "2",
                     "--interval", "0.1", "--json")
    assert bounded.returncode == 0, bounded.stderr
    assert [json.loads(line)["key"] for line in bounded.stdout.splitlines()] == [room_name] * 2
    table = replay(system, "inspect", "room", room_name, "--watch", "--count", "2", "--interval", "0.1")
    assert table.returncode == 0, table.stderr
    assert table.stdout.count(f"room {room_name}\n") == 2 and table.stdout.count("\n--- ") == 1
    await alice.close()


def test_process_logs_are_json_lines(system: LocalSystem):
    """Under the launcher a process's log is a file: JSON lines naming service and replica
    (uvicorn's own access lines and the launcher's run markers stay text)."""
    for name, service in (("room-0", "room"), ("projector", "projector"), ("gateway", "gateway")):
        path = system.log_dir / f"{name}.log"
        lines = [json.loads(line) for line in path.read_text().splitlines()
                 if line.startswith("{")]
        assert lines, f"{path} has no JSON lines:\n{path.read_text()[-2000:]}"
        assert all(line["service"] == service for line in lines), name
        if service == "room":  # from the moment its replica id exists, every line names it
            up = [i for i, line in enumerate(lines) if "is up" in line["msg"]]
            assert up and all(line.get("replica") for line in lines[up[0]:])
