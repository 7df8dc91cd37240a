"""The room object on a real nats-server: partition mapping, group commit, output gate,
optimistic concurrency, hibernation and rebuild."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from pydantic import ValidationError

from contracts.common import ErrorCode, ErrorReply
from contracts.keys import new_private_room_id
from contracts.room import (
    Accepted,
    ChatMessage,
    CreatePrivateRoom,
    GetRoom,
    JoinRoom,
    MessagesPosted,
    PostMessage,
    PostMessages,
    RoomClient,
    RoomState,
    post_message_id,
    room_reply,
    room_update,
)
from contracts.subjects import ROOM, command_subject, event_stream, event_subject, out_subject
from services.runtime.eventstore import ObjectEventStore
from tests.conftest import hosted
from tests.support import ask, eventually

pytestmark = pytest.mark.nats


async def stream_commits(nc: nats.NATS, room: str) -> list[dict]:
    store = ObjectEventStore(nc, ROOM)
    return [
        {"sequence": c.sequence, "events": [type(e).__name__ for e in c.events]}
        for c in await store.read(room)
    ]


async def test_commands_go_through_the_servers_partition_mapping(nc, nats_server, room_name):
    # A bare subscriber on the mapped subjects sees the partitioned subject the server chose.
    seen = asyncio.get_running_loop().create_future()

    async def owner(msg):
        seen.set_result(msg.subject)
        await msg.respond(b"{}")

    sub = await nc.subscribe(f"cmd.{ROOM}.*.{room_name}", cb=owner)
    await nc.request(command_subject(ROOM, room_name), b"{}", timeout=2)
    kind, partition = (await seen)[len("cmd."):].split(".")[:2]
    assert kind == ROOM and 0 <= int(partition) < nats_server.partitions
    await sub.unsubscribe()


async def test_a_message_is_durable_before_anyone_hears_of_it(room_host, nc, room_name):
    js = nc.jetstream()
    heard: list[tuple[dict, int]] = []

    async def listener(msg):
        # At the moment of the broadcast, the event must already be in the stream.
        last = await js.get_last_msg(event_stream(ROOM), event_subject(ROOM, room_name))
        heard.append((json.loads(msg.data), last.seq))

    await nc.subscribe(out_subject(ROOM, room_name), cb=listener)
    await nc.flush()

    joined = await ask(nc, RoomClient, room_name, JoinRoom(session_id="s1", name="alice"))
    posted = await ask(nc, RoomClient, room_name, PostMessage(session_id="s1", text="hello"))
    assert isinstance(joined, Accepted) and isinstance(posted, Accepted)
    assert posted.message.name == "alice" and posted.message.message == "hello"

    await eventually(lambda: len(heard) == 2, what="two broadcasts")
    commits = await stream_commits(nc, room_name)
    assert [c["events"] for c in commits] == [["Created", "MemberJoined"], ["MessagePosted"]]
    assert heard[1][0]["message"]["id"] == posted.message.id
    assert heard[1][1] == commits[1]["sequence"]


async def test_a_burst_into_one_room_is_group_committed_in_order(room_host, nc, room_name):
    await ask(nc, RoomClient, room_name, JoinRoom(session_id="s1", name="alice"))
    # 300 posts sent at once, without waiting for each other's replies.
    texts = [f"m{i}" for i in range(300)]
    replies = await asyncio.gather(
        *(ask(nc, RoomClient, room_name, PostMessage(session_id="s1", text=t)) for t in texts)
    )
    assert all(isinstance(r, Accepted) for r in replies)

    # Fewer commits than messages: the owner batched them.
    commits = await stream_commits(nc, room_name)
    posted = sum(c["events"].count("MessagePosted") for c in commits)
    assert posted == 300
    assert len(commits) < 301

    # Per-room order: versions and timestamps strictly increase together, no gaps.
    by_version = sorted(replies, key=lambda r: r.version)
    versions = [r.version for r in by_version]
    assert versions == list(range(versions[0], versions[0] + 300))
    stamps = [r.message.timestamp for r in by_version]
    assert all(a < b for a, b in zip(stamps, stamps[1:]))


async def test_a_stale_copy_is_refused_and_nothing_is_broadcast(room_host, nc, room_name):
    await ask(nc, RoomClient, room_name, JoinRoom(session_id="s1", name="alice"))
    broadcasts: list[bytes] = []

    async def listener(msg):
        broadcasts.append(msg.data)

    await nc.subscribe(out_subject(ROOM, room_name), cb=listener)
    await nc.flush()

    # Another writer (a second owner, say) appends behind the host's back.
    rogue_store = ObjectEventStore(nc, ROOM)
    loaded = await rogue_store.load(room_name)
    rogue, last = loaded.aggregate, loaded.sequence
    rogue.join("s2", "mallory")
    await rogue_store.append(room_name, rogue.collect_events(), expected=last, commit_id="rogue-1")

    # The host's append names the sequence it expected: refused, retryable, no broadcast.
    refused = await ask(nc, RoomClient, room_name, PostMessage(session_id="s1", text="lost?"))
    assert isinstance(refused, ErrorReply) and refused.code == ErrorCode.CONFLICT
    assert refused.retryable

    # The host rebuilt from the stream: the next command sees the other writer's change.
    state = await ask(nc, RoomClient, room_name, GetRoom())
    assert state.members == ["alice", "mallory"]
    assert [m.message for m in state.messages] == []
    await ask(nc, RoomClient, room_name, PostMessage(session_id="s1", text="again"))
    await eventually(lambda: len(broadcasts) == 2, what="two broadcasts")
    # On reload the host says the last stored commit again (its owner may have died before
    # broadcasting it), then the new message; the refused one is never heard of.
    updates = [room_update.validate_json(b) for b in broadcasts]
    assert [u.type for u in updates] == ["joined", "message"]
    assert updates[0].name == "mallory" and updates[1].message.message == "again"


async def test_an_idle_room_hibernates_and_wakes_with_the_same_state(nats_server, nc, room_name):
    async with hosted(nats_server, idle_after=0.2) as running:
        host = running.host(ROOM)
        await ask(nc, RoomClient, room_name, JoinRoom(session_id="s1", name="alice"))
        for i in range(5):
            await ask(nc, RoomClient, room_name, PostMessage(session_id="s1", text=f"m{i}"))
        before = await ask(nc, RoomClient, room_name, GetRoom())
        assert room_name in host.resident()

        await eventually(lambda: room_name not in host.resident(), what="eviction")

        after = await ask(nc, RoomClient, room_name, GetRoom())
        assert after == before
        posted = await ask(nc, RoomClient, room_name, PostMessage(session_id="s1", text="after wake"))
        assert posted.version == before.version + 1
        assert posted.message.timestamp > before.messages[-1].timestamp


async def test_a_restarted_service_rebuilds_rooms_from_their_streams(nats_server, nc, room_name):
    async with hosted(nats_server):
        await ask(nc, RoomClient, room_name, JoinRoom(session_id="s1", name="alice"))
        await ask(nc, RoomClient, room_name, PostMessage(session_id="s1", text="remember me"))
    async with hosted(nats_server):
        state = await ask(nc, RoomClient, room_name, GetRoom())
        assert state.members == ["alice"]
        assert [m.message for m in state.messages] == ["remember me"]


async def test_a_full_mailbox_answers_overloaded_at_once(nats_server, nc, room_name):
    async with hosted(nats_server, mailbox_limit=3):
        await ask(nc, RoomClient, room_name, JoinRoom(session_id="s1", name="alice"))
        replies = await asyncio.gather(
            *(ask(nc, RoomClient, room_name, PostMessage(session_id="s1", text=str(i))) for i in range(200))
        )
        overloaded = [r for r in replies if isinstance(r, ErrorReply)]
        accepted = [r for r in replies if isinstance(r, Accepted)]
        assert overloaded and all(r.code == ErrorCode.OVERLOADED for r in overloaded)
        assert len(overloaded) + len(accepted) == 200
        # Every accepted message, and only those, is in the room.
        commits = await stream_commits(nc, room_name)
        assert sum(c["events"].count("MessagePosted") for c in commits) == len(accepted)


@pytest.mark.parametrize(
    "payload, mentions",
    [
        (b"not json", "json"),
        (b'{"type": "post", "session_id": "s1", "text": 5}', "text"),
        (b'{"type": "post", "session_id": "s1", "text": "' + b"x" * 300 + b'"}', "text"),
        (b'{"type": "teleport"}', "type"),
        (b'{"type": "join", "session_id": "s1", "name": "a", "admin": true}', "admin"),
    ],
)
async def test_a_message_outside_the_contract_gets_bad_request(room_host, nc, room_name, payload, mentions):
    msg = await nc.request(command_subject(ROOM, room_name), payload, timeout=5)
    reply = room_reply.validate_json(msg.data)
    assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.BAD_REQUEST
    assert mentions in reply.message.lower()
    assert await stream_commits(nc, room_name) == []


async def test_a_private_room_exists_only_once_created(room_host, nc):
    room = new_private_room_id()
    missing = await ask(nc, RoomClient, room, GetRoom())
    assert isinstance(missing, ErrorReply) and missing.code == ErrorCode.NOT_FOUND
    joined = await ask(nc, RoomClient, room, JoinRoom(session_id="s1", name="alice"))
    assert isinstance(joined, ErrorReply) and joined.code == ErrorCode.NOT_FOUND

    assert isinstance(await ask(nc, RoomClient, room, CreatePrivateRoom()), Accepted)
    again = await ask(nc, RoomClient, room, CreatePrivateRoom())
    assert isinstance(again, ErrorReply) and again.code == ErrorCode.EXISTS
    state = await ask(nc, RoomClient, room, GetRoom())
    assert isinstance(state, RoomState) and state.private and state.members == []


async def test_a_retried_post_with_the_same_command_id_is_applied_once(room_host, nc, room_name):
    await ask(nc, RoomClient, room_name, JoinRoom(session_id="s1", name="alice"))
    post = PostMessage(session_id="s1", text="only once")
    first = await ask(nc, RoomClient, room_name, post)
    retry = await ask(nc, RoomClient, room_name, post)  # e.g. the gateway timed out and sent it again
    assert isinstance(first, Accepted) and isinstance(retry, Accepted)
    assert first.message is not None and retry.message is None
    state = await ask(nc, RoomClient, room_name, GetRoom())
    assert [m.message for m in state.messages] == ["only once"]


async def test_a_woken_room_is_rebuilt_from_its_snapshot_and_the_tail(nats_server, nc, room_name):
    async with hosted(nats_server, idle_after=0.2, snapshot_every=5) as running:
        host = running.host(ROOM)
        # 1 + 1 + 21 events: snapshots were taken along the way.
        await ask(nc, RoomClient, room_name, JoinRoom(session_id="s1", name="alice"))
        for i in range(21):
            await ask(nc, RoomClient, room_name, PostMessage(session_id="s1", text=f"m{i}"))
        before = await ask(nc, RoomClient, room_name, GetRoom())

        store = ObjectEventStore(nc, ROOM)
        snapshot, covered = await store.load_snapshot(room_name)
        assert snapshot is not None and snapshot.version >= 20
        assert len(await store.read(room_name, after=covered)) < 5

        # Evicted and woken: the same state as never evicting.
        await eventually(lambda: room_name not in host.resident(), what="eviction")
        assert await ask(nc, RoomClient, room_name, GetRoom()) == before
        loaded = await store.load(room_name)
        assert [ChatMessage(**m) for m in loaded.aggregate.messages] == before.messages


async def test_post_messages_commits_each_text_as_its_own_message_in_one_commit(room_host, nc, room_name):
    await ask(nc, RoomClient, room_name, JoinRoom(session_id="s1", name="alice"))
    sub = await nc.subscribe(out_subject(ROOM, room_name))
    texts = [f"t{i}" for i in range(20)]
    batch = PostMessages(session_id="s1", texts=texts)
    reply = await ask(nc, RoomClient, room_name, batch)
    assert isinstance(reply, MessagesPosted) and (reply.posted, reply.refused) == (20, None)
    assert reply.shown == reply.version  # the last text's broadcast

    # One commit of 20 MessagePosted events, each broadcast on its own, in order, with its
    # own id and a strictly increasing timestamp.
    commits = await stream_commits(nc, room_name)
    assert commits[-1]["events"] == ["MessagePosted"] * 20
    updates = []
    while len(updates) < 20:
        updates.append(room_update.validate_json((await sub.next_msg(timeout=5)).data))
    await sub.unsubscribe()
    assert [u.message.message for u in updates] == texts
    assert [u.version for u in updates] == list(range(reply.version - 19, reply.version + 1))
    ids = [u.message.id for u in updates]
    assert ids == [post_message_id(str(batch.command_id), i) for i in range(20)]
    stamps = [u.message.timestamp for u in updates]
    assert all(a < b for a, b in zip(stamps, stamps[1:]))

    # A retry (same command id: its reply was lost) posts nothing again.
    again = await ask(nc, RoomClient, room_name, batch)
    assert isinstance(again, MessagesPosted) and again.posted == 20
    state = await ask(nc, RoomClient, room_name, GetRoom())
    assert [m.message for m in state.messages] == texts


async def test_post_messages_stops_at_the_first_text_the_room_refuses(room_host, nc, room_name):
    # A session that is not a member: the first text is refused, nothing is applied.
    reply = await ask(nc, RoomClient, room_name, PostMessages(session_id="ghost", texts=["a", "b"]))
    assert isinstance(reply, MessagesPosted) and reply.posted == 0
    assert reply.refused is not None and reply.refused.code == ErrorCode.NOT_MEMBER
    state = await ask(nc, RoomClient, room_name, GetRoom())
    assert state.messages == []


async def test_post_messages_carries_each_texts_attachments(room_host, nc, room_name):
    await ask(nc, RoomClient, room_name, JoinRoom(session_id="s1", name="alice"))
    picture, notes = "a" * 64, "b" * 64
    batch = PostMessages(session_id="s1", texts=["look", "and", "read"],
                         attachments=[[picture], [], [notes]])
    reply = await ask(nc, RoomClient, room_name, batch)
    assert isinstance(reply, MessagesPosted) and reply.posted == 3
    state = await ask(nc, RoomClient, room_name, GetRoom())
    assert [(m.message, m.attachments) for m in state.messages] == [
        ("look", [picture]), ("and", []), ("read", [notes])
    ]
    # One list per text, or none: anything else is refused before it reaches a room.
    with pytest.raises(ValidationError, match="one list per text"):
        PostMessages(session_id="s1", texts=["a", "b"], attachments=[[picture]])
