"""AI replies end to end: real processes (gateway, room, context, ratelimit, projector), real
WebSocket clients, and the real google-genai client in the context service talking to a local
server that speaks the Gemini REST API (tests/fakes/gemini.py)."""

from __future__ import annotations

import sqlite3
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest
import websockets

from contracts.room import INCOMPLETE_MARK
from services.gateway.identity import SESSION_COOKIE
from services.localsystem import LocalSystem
from tests.conftest import PARTITIONS, gemini_env, running
from tests.e2e.chat_clients import ChatClient, joined
from tests.fakes.gemini import Block, Cut, Fail, Held, Reply
from tests.support import eventually, gateway, http

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ai_system(tmp_path_factory, gemini) -> Iterator[LocalSystem]:
    env = gemini_env(gemini)
    # Short enough for a test to see the room close a reply whose streamer died (the tests
    # release held chunks at once, far within it).
    env["DURACHAT_AI_STALL_TIMEOUT"] = "4"
    # The stall timeout must stay above the streamer's chunk timeouts (a rule the settings check).
    env["DURACHAT_AI_FIRST_CHUNK_TIMEOUT"] = env["DURACHAT_AI_CHUNK_TIMEOUT"] = "3.5"
    local = LocalSystem(tmp_path_factory.mktemp("ai-system"), partitions=PARTITIONS, extra_env=env)
    with running(local):
        yield local


def read_rows(db, sql: str, params: tuple) -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return []
    finally:
        conn.close()


def new_room() -> str:
    return f"ai-{uuid.uuid4().hex[:10]}"


def is_ai(event: str):
    return lambda f: isinstance(f.get("ai"), dict) and f["ai"]["event"] == event


def is_final(f: dict) -> bool:
    return f.get("kind") == "ai"


def streamed_text(frames: list[dict], reply_id: str) -> str:
    """The reply as a client rebuilds it from chunk frames: each continues at its offset."""
    text = ""
    for f in frames:
        ai = f.get("ai")
        if isinstance(ai, dict) and ai["event"] == "chunk" and ai["id"] == reply_id:
            assert ai["offset"] == len(text), f"chunk at {ai['offset']}, have {len(text)}"
            text += ai["text"]
    return text


async def test_three_members_see_the_same_chunks_in_order_and_the_same_final_text(ai_system, gemini):
    room = new_room()
    alice, bob, carol = await joined(ai_system, room, "alice", "bob", "carol")
    await bob.say("NATS is a messaging system")
    chunks = ["Durable ", "objects ", "are ", "single-threaded."]
    gemini.script(Held(chunks))
    asked = len(gemini.requests)
    await alice.send({"message": "@ai what is a durable object?"})

    for i in range(len(chunks)):
        gemini.release()
        for client in (alice, bob, carol):
            await client.recv_until(lambda f, i=i: is_ai("chunk")(f) and f["ai"]["text"] == chunks[i])
    finals = [await c.recv_until(is_final, timeout=10) for c in (alice, bob, carol)]
    for client, last in zip((alice, bob, carol), finals):
        final = last[-1]
        assert final["name"] == "AI" and final["message"] == "".join(chunks)
        assert isinstance(final["timestamp"], int)
        started = next(f["ai"] for f in client.frames if is_ai("started")(f))
        assert started["label"] == "Gemini" and started["asker"] == "alice"
        assert streamed_text(client.frames, final["id"]) == "".join(chunks)
    # Everyone saw the same chunk frames, in the same order.
    seqs = [[f["ai"] for f in c.frames if is_ai("chunk")(f)] for c in (alice, bob, carol)]
    assert seqs[0] == seqs[1] == seqs[2] and len(seqs[0]) >= 1

    # What the provider received: the window and the settings.
    stream_calls = [r for r in gemini.requests[asked:] if r.kind == "stream"]
    assert len(stream_calls) == 1
    call = stream_calls[0]
    assert call.model == "gemini-2.5-flash" and call.headers.get("x-goog-api-key") == "test-key"
    role, last_turn = call.turns[-1]
    assert role == "user"
    assert last_turn.endswith("alice asks: what is a durable object?")
    assert "bob: NATS is a messaging system" in last_turn
    assert room in call.system_instruction and "alice" in call.system_instruction
    assert any(r.kind == "count" for r in gemini.requests[asked:])  # the window was counted
    for client in (alice, bob, carol):
        await client.close()


async def test_a_member_who_reconnects_mid_reply_gets_the_text_so_far_then_the_rest(
    ai_system, gemini
):
    room = new_room()
    alice, bob = await joined(ai_system, room, "alice", "bob")
    chunks = ["One, ", "two, ", "three, ", "four."]
    gemini.script(Held(chunks))
    await alice.send({"message": "/ai count to four"})
    gemini.release(2)
    await bob.recv_until(lambda f: is_ai("chunk")(f) and "two" in f["ai"]["text"])
    await bob.close()

    # Bob comes back in the middle of the reply.
    bob = await ChatClient.connect(ai_system.ws_url, room)
    history = await bob.join("bob")
    started = next(f["ai"] for f in history if is_ai("started")(f))
    assert streamed_text(history, started["id"]) == "One, two, "
    gemini.release(2)
    await bob.recv_until(is_final, timeout=10)
    assert streamed_text(bob.frames, started["id"]) == "One, two, three, four."
    assert bob.frames[-1]["message"] == "One, two, three, four."
    for client in (alice, bob):
        await client.close()


async def test_the_room_chats_on_while_a_reply_streams_and_questions_queue(ai_system, gemini):
    room = new_room()
    alice, bob = await joined(ai_system, room, "alice", "bob")
    gemini.script(Held(["first ", "answer"]), Reply(["second answer"]))
    await alice.send({"message": "@ai first question"})
    await alice.recv_until(is_ai("started"))
    # While the reply streams: ordinary chat goes on, and a second question waits its turn.
    assert (await bob.say("still chatting"))["message"] == "still chatting"
    await bob.send({"message": "@ai second question"})
    queued = (await bob.recv_until(lambda f: is_ai("queued")(f) and f["ai"]["asker"] == "bob"))[-1]
    gemini.release(2)
    first = (await alice.recv_until(is_final, timeout=10))[-1]
    second = (await alice.recv_until(is_final, timeout=10))[-1]
    assert (first["message"], second["message"]) == ("first answer", "second answer")
    assert second["id"] == queued["ai"]["id"]
    for client in (alice, bob):
        await client.close()


@pytest.mark.parametrize(
    "step, reason, partial, words",
    [
        (Fail(429), "rate_limited", "", "429"),
        (Fail(500), "server", "", "500"),
        (Cut(["Half an ", "answer"]), "cut", "Half an answer", "dropped"),
        (Block(["Some text "], reason="SAFETY"), "blocked", "Some text ", "safety"),
        (Reply([]), "server", "", "empty"),
    ],
)
async def test_a_failed_reply_keeps_its_text_and_the_room_is_told(
    ai_system, gemini, step, reason, partial, words
):
    room = new_room()
    (alice,) = await joined(ai_system, room, "alice")
    gemini.script(step)
    await alice.send({"message": "@ai please answer"})
    frames = await alice.recv_until(lambda f: f.get("kind") == "system", timeout=15)
    failed = next(f["ai"] for f in frames if is_ai("failed")(f))
    assert failed["reason"] == reason
    notice = frames[-1]["message"]
    assert notice.startswith("The AI could not answer alice:") and words in notice.lower()
    finals = [f for f in frames if is_final(f)]
    if partial:
        assert [f["message"] for f in finals] == [partial + INCOMPLETE_MARK]
    else:
        assert finals == []
    # Nothing blocks the room: the next question is answered.
    gemini.script(Reply(["fine now"]))
    await alice.send({"message": "@ai again"})
    assert (await alice.recv_until(is_final, timeout=10))[-1]["message"] == "fine now"
    await alice.close()


async def test_context_settings_shape_the_request_and_exchanges_join_the_window(ai_system, gemini):
    room = new_room()
    # Dora's browser: a guest identity in its session cookie, for the API and the socket.
    browser = gateway(ai_system)
    user = browser.post("/api/session").json()["user_id"]
    path = f"/api/users/{urllib.parse.quote(user)}/context"
    settings = {
        "model": "gemini-test-model", "temperature": 0.25,
        "system_prompt": "Answer like a pirate.", "language": "fr",
    }
    saved = browser.put(path, json=settings)
    assert saved.status_code == 200 and saved.json()["settings"] == settings
    assert browser.put(path, json={"temperature": 9}).status_code == 422
    assert browser.put(path, json={"colour": "red"}).status_code == 422
    assert http(ai_system, "GET", path).status_code == 401

    cookie = f"{SESSION_COOKIE}={browser.cookies[SESSION_COOKIE]}"
    dora = ChatClient(await websockets.connect(
        f"{ai_system.ws_url}/api/room/{room}/websocket", additional_headers={"Cookie": cookie}
    ))
    await dora.join("dora")
    gemini.script(Reply(["Arr, ", "bonjour."]), Reply(["Encore."]))
    asked = len(gemini.requests)
    await dora.send({"message": "@ai say hello"})
    await dora.recv_until(is_final, timeout=10)
    await dora.send({"message": "@ai again"})
    await dora.recv_until(lambda f: is_final(f) and f["message"] == "Encore.", timeout=10)

    first, second = [r for r in gemini.requests[asked:] if r.kind == "stream"]
    assert first.model == "gemini-test-model"
    assert first.generation_config.get("temperature") == 0.25
    assert "Answer like a pirate." in first.system_instruction and "fr" in first.system_instruction
    # The second window holds the first exchange as a user turn and a model turn.
    assert second.turns[:2] == [("user", "say hello"), ("model", "Arr, bonjour.")]
    # ... and not a second time among the room's recent messages.
    assert "bonjour" not in second.turns[-1][1] and "say hello" not in second.turns[-1][1]
    response = browser.get(path)
    assert response.status_code == 200
    view = response.json()
    assert [(e["question"], e["answer"]) for e in view["exchanges"]] == [
        ("say hello", "Arr, bonjour."), ("again", "Encore."),
    ]
    await dora.close()
    browser.close()


async def test_ai_replies_reach_the_read_store_as_messages(ai_system, gemini):
    room = new_room()
    (erin,) = await joined(ai_system, room, "erin")
    gemini.script(Reply(["stored ", "reply"]), Fail(429))
    await erin.send({"message": "@ai store this"})
    final = (await erin.recv_until(is_final, timeout=10))[-1]
    await erin.send({"message": "@ai and fail"})
    await erin.recv_until(lambda f: f.get("kind") == "system", timeout=10)

    def rows():
        return read_rows(
            ai_system.read_db,
            "SELECT author, text, kind FROM messages WHERE room = ? ORDER BY timestamp",
            (room,),
        )

    await eventually(lambda: len(rows()) >= 4, timeout=10, what="projected rows")
    got = rows()
    assert ("AI", "stored reply", "ai") in got and final["message"] == "stored reply"
    assert [r[2] for r in got] == ["user", "ai", "user", "system"]
    # Both replies are charged to erin's identity (a guest of this socket: it showed none).
    (user,) = {r[0] for r in read_rows(
        ai_system.read_db, "SELECT user_id FROM ai_replies WHERE room = ?", (room,)
    )}
    assert user.startswith("guest:") and user != "guest:erin"
    usage = read_rows(
        ai_system.read_db, "SELECT requests, tokens FROM ai_usage_daily WHERE user_id = ?",
        (user,),
    )
    assert usage and usage[0][0] == 2 and usage[0][1] > 0
    await erin.close()


async def test_a_reply_whose_context_service_is_killed_is_closed_by_the_rooms_alarm(
    ai_system, gemini
):
    room = new_room()
    (alice,) = await joined(ai_system, room, "alice")
    gemini.script(Held(["Before the crash ", "after"]))
    await alice.send({"message": "@ai tell me a long story"})
    gemini.release()
    await alice.recv_until(lambda f: is_ai("chunk")(f) and "crash" in f["ai"]["text"])
    ai_system.context.kill()  # kill -9: no goodbye, the reply is left streaming
    try:
        # The room's stall deadline (DURACHAT_AI_STALL_TIMEOUT, 4 s here) closes it; the
        # alarm's granularity is 1 s.
        frames = await alice.recv_until(lambda f: f.get("kind") == "system", timeout=20)
        assert next(f["ai"] for f in frames if is_ai("failed")(f))["reason"] == "timeout"
        assert [f["message"] for f in frames if is_final(f)] == [
            "Before the crash " + INCOMPLETE_MARK
        ]
        assert "stopped answering" in frames[-1]["message"]
    finally:
        gemini.release()  # let the fake finish the held step of the dead connection
        ai_system.start_context()
    # A new context service answers the next question.
    gemini.script(Reply(["back"]))
    await alice.send({"message": "@ai are you back?"})
    assert (await alice.recv_until(is_final, timeout=20))[-1]["message"] == "back"
    await alice.close()
