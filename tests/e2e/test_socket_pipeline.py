"""One socket at full speed, end to end: frames that arrive while a command is in flight ride
the next one (fewer commits than messages), in order; a refused frame is answered at its
position; past the bound of unanswered frames each frame is refused with its own error; a
crash of the room service mid-burst loses, duplicates and reorders nothing."""

from __future__ import annotations

import asyncio
import json
import uuid

import nats
import pytest

from contracts.subjects import ROOM
from services.gateway.websocket import OVERLOADED
from services.localsystem import LocalSystem
from services.runtime.eventstore import ObjectEventStore
from tests.conftest import running
from tests.e2e.chat_clients import ChatClient, joined

pytestmark = pytest.mark.e2e

BOUND = 8


def new_room() -> str:
    return f"pipe-{uuid.uuid4().hex[:10]}"


async def burst(client: ChatClient, frames: list) -> None:
    """Write every frame at once, without waiting for anything between them."""
    for frame in frames:
        await client.send(frame)


async def commits_of(system: LocalSystem, room: str) -> list[list[str]]:
    nc = await nats.connect(system.nats.url)
    try:
        return [[type(e).__name__ for e in c.events] for c in await ObjectEventStore(nc, ROOM).read(room)]
    finally:
        await nc.close()


def own_answers(frames: list[dict]) -> list[str]:
    """What a sender was told of its frames, in order: its messages and its errors."""
    return [f["message"] if "message" in f else f"error: {f['error']}" for f in frames
            if "message" in f or "error" in f]


async def test_a_burst_from_one_socket_is_delivered_in_order_in_few_commits(system):
    room = new_room()
    alice, bob = await joined(system, room, "alice", "bob")
    # 250 frames at once: within the default bound of 256 unanswered frames.
    texts = [f"m{i}" for i in range(250)]
    await burst(alice, [{"message": t} for t in texts])
    seen = await bob.recv_until(lambda f: f.get("message") == "m249", timeout=20)
    assert [f["message"] for f in seen if "message" in f] == texts
    stamps = [f["timestamp"] for f in seen if "message" in f]
    assert all(a < b for a, b in zip(stamps, stamps[1:]))
    assert len({f["id"] for f in seen if "message" in f}) == 250

    # The frames that arrived while a command was in flight rode the next one: fewer
    # commits than messages, each message its own event.
    commits = [c for c in await commits_of(system, room) if "MessagePosted" in c]
    assert sum(c.count("MessagePosted") for c in commits) == 250
    assert len(commits) < 250
    await alice.close()
    await bob.close()


async def test_refused_frames_are_answered_at_their_position(system):
    room = new_room()
    (alice,) = await joined(system, room, "alice")
    frames = [
        {"message": "one"}, {"message": "two"}, "not json", {"message": "three"},
        {"message": "x" * 257}, {"message": "four"}, {"message": ""}, {"message": "five"},
    ]
    await burst(alice, frames)
    got = await alice.recv_until(lambda f: f.get("message") == "five", timeout=10)
    assert own_answers(got) == [
        "one", "two", "error: Frame is not valid JSON.", "three", "error: Message too long.",
        "four", "error: Message is empty.", "five",
    ]
    await alice.close()


async def test_an_error_after_an_ai_question_is_not_held_back(system):
    # An AI question ends with events nobody is shown (the dispatch, the alarm): the error
    # of the next frame waits only for the question's own broadcasts, not for a timeout.
    # With the context service away, nothing else is broadcast after the question.
    room = new_room()
    (alice,) = await joined(system, room, "alice")
    system.context.stop()
    try:
        await burst(alice, [{"message": "@ai what is durachat?"}, "not json"])
        got = await alice.recv_until(lambda f: "error" in f, timeout=3)
        assert own_answers(got) == ["@ai what is durachat?", "error: Frame is not valid JSON."]
        await alice.close()
    finally:
        system.start_context()


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    with running(LocalSystem(
        tmp_path_factory.mktemp("bounded"), extra_env={"DURACHAT_MAX_UNANSWERED_FRAMES": str(BOUND)}
    )) as local:
        yield local


async def test_past_the_bound_each_frame_gets_its_own_refusal_and_order_holds(bounded):
    room = new_room()
    alice, bob = await joined(bounded, room, "alice", "bob")
    # 200 frames in one write: far more than BOUND can wait for an answer at once.
    texts = [f"m{i}" for i in range(200)]
    async with alice.ws.send_context():
        for t in texts:
            alice.ws.protocol.send_text(json.dumps({"message": t}).encode())
    refusal = f"error: {OVERLOADED.format(bound=BOUND)}"
    answers: list[str] = []
    while len(answers) < 200:
        answers += own_answers([await alice.recv(timeout=10)])
    refused = answers.count(refusal)
    posted = [a for a in answers if a != refusal]
    assert refused > 0 and refused + len(posted) == 200, answers[:20]
    # What was accepted is a subsequence of what was sent, in order, and bob saw the same.
    assert posted == [t for t in texts if t in set(posted)]
    seen = await bob.recv_until(lambda f: f.get("message") == posted[-1], timeout=10)
    assert [f["message"] for f in seen if "message" in f] == posted
    # The socket is fine afterwards.
    assert (await alice.say("after"))["message"] == "after"
    await alice.close()
    await bob.close()


async def test_a_room_crash_mid_burst_loses_duplicates_and_reorders_nothing(tmp_path):
    with running(LocalSystem(tmp_path / "crash")) as system:
        room = new_room()
        alice, bob = await joined(system, room, "alice", "bob")
        texts = [f"m{i}" for i in range(400)]
        sending = asyncio.create_task(burst(alice, [{"message": t} for t in texts[:200]]))
        await bob.recv_until(lambda f: f.get("message") == "m20", timeout=10)
        # kill -9 while commands are in flight: a commit may be stored with its reply lost;
        # the gateway sends the same command again, and the frames behind it wait their turn.
        old = system.rooms.pop()
        old.kill()
        system.start_room()
        await sending
        await bob.recv_until(lambda f: f.get("message") == "m199" or "error" in f, timeout=30)
        await burst(alice, [{"message": t} for t in texts[200:]])
        await bob.recv_until(lambda f: f.get("message") == "m399" or "error" in f, timeout=30)
        assert bob.messages() == texts
        assert not [f for f in alice.frames if "error" in f]
        await alice.close()
        await bob.close()
