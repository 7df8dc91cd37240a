"""`durachat-replay` as a user runs it (`python -m services.replay --nats ... --db ...`),
against real processes: events come from chatting over WebSockets."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import nats
import pytest
from eventsourcing.utils import get_topic

from contracts.subjects import ROOM, event_stream, event_subject
from services.room.domainmodel import Room, room_id
from services.runtime.eventstore import CommitCodec, ObjectEventStore
from services.runtime.natsserver import free_port
from tests.e2e.chat_clients import ChatClient, joined
from tests.e2e.read_models import TABLES, publish_unreadable_commits, rows
from tests.support import eventually

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def new_room() -> str:
    return f"replay-{uuid.uuid4().hex[:8]}"


def command(system, *args: str, db: Path | None = None, nats_url: str | None = None) -> list[str]:
    return [sys.executable, "-m", "services.replay", "--nats", nats_url or system.nats.url,
            "--db", str(db or system.read_db), *args]


def cli(system, *args: str, **where) -> subprocess.CompletedProcess:
    """Run the CLI to completion; wide columns so tables do not wrap what we look for."""
    return subprocess.run(
        command(system, *args, **where), capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "COLUMNS": "250"},
    )



def projected_to(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT sequence FROM projector_positions WHERE stream = ?",
                               (event_stream(ROOM),)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:  # not created or not migrated yet
        return 0
    return row[0] if row else 0


async def last_sequence(system) -> int:
    nc = await nats.connect(system.nats.url)
    try:
        return (await nc.jetstream().stream_info(event_stream(ROOM))).state.last_seq
    finally:
        await nc.close()


async def caught_up(system) -> int:
    """Wait until the projector has recorded the stream's last sequence in the read store."""
    target = await last_sequence(system)

    def done() -> bool:
        assert system.projector.alive(), f"the projector exited:\n{system.logs()}"
        return projected_to(system.read_db) == target

    await eventually(done, timeout=15, what=f"the projector to reach {target}")
    return target


async def chat(system, room: str, name: str, *texts: str) -> ChatClient:
    (client,) = await joined(system, room, name)
    for text in texts:
        assert (await client.say(text))["message"] == text
    return client


async def leave(system, room: str, *clients: ChatClient, staying: tuple[str, ...] = ()) -> None:
    """Close the sockets and wait until the room has stored their leaves (only `staying`
    are left), so no commit of this test lands while a later one compares stores."""
    for client in clients:
        await client.close()
    nc = await nats.connect(system.nats.url)
    store = ObjectEventStore(nc, ROOM)
    async def left() -> bool:
        return tuple((await store.load(room)).aggregate.members.values()) == staying

    try:
        await eventually(left, what=f"the members of {room} to leave")
    finally:
        await nc.close()


async def test_events_and_the_state_as_of_a_sequence_and_a_time(system):
    room = new_room()
    alice = await chat(system, room, "alice", "one", "two")
    sequence = await last_sequence(system)  # "two" is stored: its echo came after the append
    await asyncio.sleep(0.02)
    moment = dt.datetime.now(dt.UTC)
    await asyncio.sleep(0.02)
    for text in ("three", "four"):
        await alice.say(text)

    # Every event as JSON lines, in order: Created and the join in one commit, then posts.
    listed = cli(system, "events", room, "--json")
    assert listed.returncode == 0, listed.stderr
    events = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [e["event"] for e in events] == ["Created", "MemberJoined"] + ["MessagePosted"] * 4
    assert [e["version"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e["fields"]["text"] for e in events[2:]] == ["one", "two", "three", "four"]
    assert events[0]["fields"]["name"] == room and events[1]["fields"]["member_name"] == "alice"
    assert events[0]["sequence"] == events[1]["sequence"] < events[2]["sequence"]
    assert all(e["time"].endswith("Z") for e in events)

    # The same as a table.
    pretty = cli(system, "events", room)
    assert pretty.returncode == 0, pretty.stderr
    assert "MessagePosted" in pretty.stdout and "MemberJoined" in pretty.stdout
    assert all(f'text="{t}"' in pretty.stdout for t in ("one", "two", "three", "four"))

    # As of the sequence and as of the time between "two" and "three".
    for as_of in (["--seq", str(sequence)], ["--at", moment.isoformat()]):
        result = cli(system, "state", room, *as_of, "--json")
        assert result.returncode == 0, result.stderr
        state = json.loads(result.stdout)
        assert [m["message"] for m in state["messages"]] == ["one", "two"], as_of
        assert state["members"] == ["alice"] and state["version"] == 4
        assert state["private"] is False and state["expired"] is False

    # Now: everything, as a table; before the room existed: nothing, exit 1.
    now = cli(system, "state", room)
    assert now.returncode == 0, now.stderr
    assert all(t in now.stdout for t in ("one", "two", "three", "four", "alice"))
    before = cli(system, "state", room, "--at", "2020-01-01T00:00Z")
    assert before.returncode == 1 and "no events" in before.stderr
    await leave(system, room, alice)


async def test_export_then_import_into_a_new_room(system, tmp_path):
    room, copy = new_room(), new_room()
    alice = await chat(system, room, "alice", "a1", "a2")
    bob = await chat(system, room, "bob", "b1")
    # The last commit is a leave, not a message: the gateway currently repeats the last
    # commit's broadcast, which a room re-sends when it is loaded, to the first socket.
    await alice.close()
    await bob.recv_until(lambda f: f.get("quit") == "alice")
    exported = tmp_path / "room.jsonl"
    result = cli(system, "export", room, "--out", str(exported))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [line["sequence"] for line in lines] == sorted(line["sequence"] for line in lines)
    assert lines[0]["events"][0]["topic"].endswith("Room.Created")
    assert all({"time", "events"} <= line.keys() for line in lines)

    result = cli(system, "import", str(exported), "--room", copy)
    assert result.returncode == 0, result.stderr
    original = json.loads(cli(system, "state", room, "--json").stdout)
    imported = json.loads(cli(system, "state", copy, "--json").stdout)
    assert [m["message"] for m in imported["messages"]] == ["a1", "a2", "b1"]
    assert imported["messages"] == original["messages"]
    assert imported["members"] == original["members"] and imported["version"] == original["version"]
    created = json.loads(cli(system, "events", copy, "--json").stdout.splitlines()[0])
    assert created["event"] == "Created" and created["fields"]["name"] == copy

    # The copy exists now: a second import is refused, and nothing is appended.
    again = cli(system, "import", str(exported), "--room", copy)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert json.loads(cli(system, "state", copy, "--json").stdout)["version"] == imported["version"]

    # The room service serves the imported room like any other.
    carol = await ChatClient.connect(system.ws_url, copy)
    frames = await carol.join("carol")
    assert [f["message"] for f in frames if "message" in f] == ["a1", "a2", "b1"]
    await leave(system, room, bob)
    await leave(system, copy, carol, staying=("bob",))  # imported: bob's old session


async def test_rebuild_swaps_in_a_new_file_the_projector_keeps_writing(system, tmp_path):
    room = new_room()
    alice = await chat(system, room, "alice", "before the rebuild")
    await caught_up(system)
    before = {table: rows(system.read_db, table) for table in TABLES}
    inode = os.stat(system.read_db).st_ino

    # --no-swap leaves the rebuilt store where it was asked to go.
    aside = tmp_path / "aside.db"
    result = cli(system, "rebuild", "--out", str(aside), "--no-swap")
    assert result.returncode == 0, result.stderr
    assert os.stat(system.read_db).st_ino == inode
    assert {table: rows(aside, table) for table in TABLES} == before

    result = cli(system, "rebuild")
    assert result.returncode == 0, result.stderr
    assert "swapped in" in result.stdout
    assert os.stat(system.read_db).st_ino != inode
    assert {table: rows(system.read_db, table) for table in TABLES} == before
    assert not list(system.read_db.parent.glob("read.db.rebuild-*"))

    # The projector noticed the new file and goes on projecting into it.
    await alice.say("after the rebuild")
    await caught_up(system)
    texts = [r[3] for r in sorted(rows(system.read_db, "messages"), key=lambda r: r[4])
             if r[0] == room]
    assert texts == ["before the rebuild", "after the rebuild"]
    await leave(system, room, alice)


async def test_check_finds_a_tampered_row_and_rebuild_room_repairs_it(system):
    room = new_room()
    alice = await chat(system, room, "alice", "as it was said")
    await caught_up(system)
    healthy = cli(system, "check")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "equals a replay" in healthy.stdout

    conn = sqlite3.connect(system.read_db, timeout=10)
    with conn:
        conn.execute("UPDATE messages SET text = 'tampered' WHERE room = ?", (room,))
        conn.execute("DELETE FROM members_seen WHERE room = ?", (room,))
    conn.close()
    tampered = cli(system, "check")
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    assert "'tampered' / 'as it was said'" in tampered.stdout
    assert "missing from live" in tampered.stdout and "differs from a replay" in tampered.stdout

    repaired = cli(system, "rebuild-room", room)
    assert repaired.returncode == 0, repaired.stderr
    assert "re-projected 2 commits" in repaired.stdout  # the join (with Created), the post
    assert [r[3] for r in rows(system.read_db, "messages") if r[0] == room] == ["as it was said"]
    assert [r[1] for r in rows(system.read_db, "members_seen") if r[0] == room] == ["alice"]
    assert cli(system, "check").returncode == 0
    await leave(system, room, alice)


def stored_commit(room: str, first_version: int, *events: tuple[type, dict]) -> bytes:
    """A commit as the room stores one: the room's event classes, by the room's codec."""
    return CommitCodec().encode([
        cls(originator_id=room_id(room), originator_version=first_version + n,
            timestamp=cls.create_timestamp(), **fields)
        for n, (cls, fields) in enumerate(events)
    ])


def room_created(room: str) -> tuple[type, dict]:
    return Room.Created, {"originator_topic": get_topic(Room), "name": room, "private": False}


async def test_check_and_rebuild_room_keep_ai_usage_exact(system):
    # One user's AI replies in two rooms on one day (appended as the room stores them;
    # the room service never loads these rooms).
    user, lobby, den = f"user-{uuid.uuid4().hex[:8]}", new_room(), new_room()
    at = int(dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC).timestamp() * 1000)
    nc = await nats.connect(system.nats.url)
    js = nc.jetstream()
    await js.publish(event_subject(ROOM, lobby), stored_commit(
        lobby, 1, room_created(lobby),
        (Room.AiReplyChunk, {"reply_id": "r1", "offset": 0, "text": "hi"}),
        (Room.AiReplyCompleted, {"reply_id": "r1", "user_id": user, "text": "hi",
                                 "posted_at": at, "prompt_tokens": 10, "output_tokens": 1})))
    await js.publish(event_subject(ROOM, den), stored_commit(
        den, 1, room_created(den),
        (Room.AiReplyCompleted, {"reply_id": "r2", "user_id": user, "text": "yo",
                                 "posted_at": at + 1, "prompt_tokens": 20, "output_tokens": 2}),
        (Room.AiReplyFailed, {"reply_id": "r3", "user_id": user, "reason": "cut",
                              "text": "y [incomplete]", "posted_at": at + 2, "prompt_tokens": 3,
                              "output_tokens": 0, "provider_called": True})))
    await nc.close()
    await caught_up(system)

    def usage() -> list[tuple]:
        return [r for r in rows(system.read_db, "ai_usage_daily") if r[0] == user]

    assert usage() == [(user, "2026-03-01", 3, 36)]
    assert cli(system, "check").returncode == 0

    # A day's usage tampered: check sees it, rebuild-room of either room repairs it.
    conn = sqlite3.connect(system.read_db, timeout=10)
    with conn:
        conn.execute("UPDATE ai_usage_daily SET tokens = 0 WHERE user_id = ?", (user,))
    conn.close()
    tampered = cli(system, "check")
    assert tampered.returncode == 1 and "ai_usage_daily" in tampered.stdout, tampered.stdout
    repaired = cli(system, "rebuild-room", lobby)
    assert repaired.returncode == 0, repaired.stderr
    assert "1 ai_replies" in repaired.stdout
    assert usage() == [(user, "2026-03-01", 3, 36)]

    # Rebuilding a room again and again never counts its replies twice.
    for room in (lobby, den, lobby):
        assert cli(system, "rebuild-room", room).returncode == 0
    assert usage() == [(user, "2026-03-01", 3, 36)]
    assert cli(system, "check").returncode == 0


async def test_check_lists_dead_letters(system):
    nc = await nats.connect(system.nats.url)
    js = nc.jetstream()
    garbage, unknown = await publish_unreadable_commits(js, "poisoned room")
    subject = event_subject(ROOM, "poisoned room")
    await nc.close()
    await caught_up(system)

    result = cli(system, "check")
    assert result.returncode == 0, result.stdout + result.stderr  # in the store and the replay
    letters = [line for line in result.stdout.splitlines() if subject in line]
    assert len(letters) == 2
    assert str(garbage.seq) in letters[0] and "not a stored commit" in letters[0]
    assert str(unknown.seq) in letters[1] and "unknown room event 'Teleported'" in letters[1]
    listed = cli(system, "events", "poisoned room")
    assert listed.returncode == 0
    assert "unreadable" in listed.stdout and "Teleported" in listed.stdout


async def test_follow_prints_new_events_until_ctrl_c(system):
    room = new_room()
    alice = await chat(system, room, "alice", "already there")
    follower = await asyncio.create_subprocess_exec(
        *command(system, "events", room, "--json", "--follow"), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = follower.stdout.readline
        seen = [json.loads(await asyncio.wait_for(line(), 15)) for _ in range(3)]
        assert [e["event"] for e in seen] == ["Created", "MemberJoined", "MessagePosted"]
        await alice.say("said while following")
        live = json.loads(await asyncio.wait_for(line(), 15))
        assert live["event"] == "MessagePosted" and live["fields"]["text"] == "said while following"
        follower.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(follower.wait(), 15) == 0
    finally:
        if follower.returncode is None:
            follower.kill()
            await follower.wait()
    await leave(system, room, alice)


async def test_an_unusable_store_or_nats_is_one_line_and_exit_3(system, tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00\xffthis is not an SQLite database\n" * 200)
    for args in (["check"], ["rebuild-room", "lobby"]):
        result = cli(system, *args, db=garbage)
        assert result.returncode == 3, result.stderr
        assert "not a usable read store" in result.stderr and str(garbage) in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr

    missing = cli(system, "check", db=tmp_path / "missing.db")
    assert missing.returncode == 3 and "no read store at" in missing.stderr

    nowhere = f"nats://127.0.0.1:{free_port()}"
    for args in (["events", "lobby"], ["rebuild", "--out", str(tmp_path / "never.db")]):
        result = cli(system, *args, nats_url=nowhere)
        assert result.returncode == 3, result.stderr
        assert f"cannot reach NATS at {nowhere}" in result.stderr
        assert result.stderr.split(f"{nowhere}:", 1)[1].strip()  # and why, never empty
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "never.db").exists()
