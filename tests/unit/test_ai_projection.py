"""AI replies in the read store: a finished reply is a message row (kind 'ai'), a room's
notice a 'system' row, and what a reply cost is counted per user and UTC day, exactly once,
also when one room is re-projected (`durachat-replay rebuild-room`)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time

from eventsourcing.utils import get_topic

from contracts.room import AI_NAME, INCOMPLETE_MARK, SYSTEM_NAME
from contracts.subjects import ROOM, event_subject
from services.readstore import queries
from services.readstore.projection import ROOM_STREAM, project_commit, record_position
from services.readstore.store import open_read_store, transaction
from services.replay.rebuild import reproject_room
from services.room.aireply import AiDeadlines
from services.room.domainmodel import Room, room_id
from services.runtime.eventstore import CommitCodec, StoredMessage


class ChatRoom:
    """A stand-in for the room aggregate: it records the Room's own event classes (the schema
    in services.room.events, stored under the room's topics) by the same codec, without the
    room's rules, so a test can store any history the projection may meet."""

    def __init__(self, name: str, private: bool) -> None:
        self.name = name
        self.id = room_id(name)
        self.version = 0
        self._pending: list = []
        self._record(Room.Created, originator_topic=get_topic(Room), name=name, private=private)

    def _record(self, event_class: type, **fields) -> None:
        self.version += 1
        self._pending.append(event_class(
            originator_id=self.id, originator_version=self.version,
            timestamp=event_class.create_timestamp(), **fields,
        ))

    def collect_events(self) -> list:
        pending, self._pending = self._pending, []
        return pending

    def post(self, **fields) -> None:
        self._record(Room.MessagePosted, **fields)

    def ask(self, **fields) -> None:
        self._record(Room.AiReplyRequested, **fields)

    def dispatch(self, **fields) -> None:
        self._record(Room.AiReplyDispatched, **fields)

    def start(self, **fields) -> None:
        self._record(Room.AiReplyStarted, **fields)

    def chunk(self, **fields) -> None:
        self._record(Room.AiReplyChunk, **fields)

    def complete(self, **fields) -> None:
        self._record(Room.AiReplyCompleted, **fields)

    def fail(self, **fields) -> None:
        self._record(Room.AiReplyFailed, **fields)

    def notice(self, **fields) -> None:
        self._record(Room.SystemMessagePosted, **fields)


codec = CommitCodec()


def ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1000)


class Stream:
    """EVT_ROOM in miniature: each `commit` stores a room's pending events as one message
    and the projector applies it, rows and position in one transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.messages: list[StoredMessage] = []

    def append(self, room: ChatRoom, data: bytes | None = None) -> StoredMessage:
        data = data if data is not None else codec.encode(room.collect_events())
        msg = StoredMessage(len(self.messages) + 1, event_subject(ROOM, room.name), "", data)
        self.messages.append(msg)
        return msg

    def commit(self, room: ChatRoom, data: bytes | None = None) -> int:
        """Store and project one commit; returns how many events were dead-lettered."""
        msg = self.append(room, data)
        with transaction(self.conn) as conn:
            dead = project_commit(conn, ROOM_STREAM, msg.subject, msg.sequence, msg.data)
            record_position(conn, ROOM_STREAM, msg.sequence)
        return dead

    def of(self, room: str) -> list[StoredMessage]:
        return [m for m in self.messages if m.subject == event_subject(ROOM, room)]


def open_room(name: str) -> ChatRoom:
    return ChatRoom(name=name, private=False)


def ask(room: ChatRoom, reply_id: str, user_id: str, question: str, at: int) -> None:
    """A question as the room records it: the message and the request, one commit."""
    room.post(message_id=f"q-{reply_id}", member_name=user_id, text=f"@ai {question}",
              posted_at=at)
    room.ask(reply_id=reply_id, user_id=user_id, asker=user_id, question=question,
             requested_at=at)


def stream_reply(room: ChatRoom, reply_id: str, pieces: list[str], deadline: float) -> None:
    room.dispatch(reply_id=reply_id, deadline=deadline)
    room.start(reply_id=reply_id, asker="someone", model="gemini-2.5-flash", label="Gemini",
               deadline=deadline)
    offset = 0
    for piece in pieces:
        room.chunk(reply_id=reply_id, offset=offset, text=piece)
        offset += len(piece)


def table(conn: sqlite3.Connection, sql: str) -> list[tuple]:
    return [tuple(r) for r in conn.execute(sql)]


def everything(conn: sqlite3.Connection) -> dict[str, list[tuple]]:
    """Every projected table, row by row (what `durachat-replay check` compares)."""
    order = {"rooms": "name", "messages": "room, id", "members_seen": "room, name",
             "ai_replies": "room, reply_id", "ai_usage_daily": "user_id, day",
             "dead_letters": "stream, sequence, event_index"}
    return {t: table(conn, f"SELECT * FROM {t} ORDER BY {k}") for t, k in order.items()}


def usage(conn: sqlite3.Connection) -> list[tuple]:
    return table(conn, "SELECT user_id, day, requests, tokens FROM ai_usage_daily"
                       " ORDER BY user_id, day")


def test_finished_replies_and_notices_are_message_rows_of_their_kind(tmp_path):
    conn = open_read_store(tmp_path / "read.db")
    stream = Stream(conn)
    room = open_room("lobby")
    t0 = int(time.time() * 1000) + 1000  # after the room was created

    # alice asks; the reply streams in pieces and completes.
    ask(room, "r1", "alice", "what is NATS?", t0)
    stream.commit(room)
    stream_reply(room, "r1", ["A messaging ", "system."], deadline=t0 / 1000 + 30)
    stream.commit(room)
    room.complete(reply_id="r1", user_id="alice", text="A messaging system.",
                  posted_at=t0 + 900, prompt_tokens=12, output_tokens=5)
    stream.commit(room)
    completed_version = room.version

    # bob's reply is cut off after a piece: the partial text is kept, marked incomplete.
    ask(room, "r2", "bob", "tell me a story", t0 + 1000)
    stream_reply(room, "r2", ["Once upon"], deadline=t0 / 1000 + 31)
    room.fail(reply_id="r2", user_id="bob", reason="timeout", text="Once upon" + INCOMPLETE_MARK,
              posted_at=t0 + 2000, prompt_tokens=8, output_tokens=2, provider_called=True)
    stream.commit(room)

    # carol's never streamed anything: no AI message, the room says why instead.
    ask(room, "r3", "carol", "hello?", t0 + 3000)
    room.fail(reply_id="r3", user_id="carol", reason="quota", text="", posted_at=t0 + 3001,
              prompt_tokens=0, output_tokens=0, provider_called=False)
    room.notice(message_id="n-r3", text="carol has used today's AI quota.", posted_at=t0 + 3002)
    stream.commit(room)

    rows = table(conn, "SELECT id, author, text, timestamp, kind FROM messages"
                       " ORDER BY timestamp, id")
    assert rows == [
        ("q-r1", "alice", "@ai what is NATS?", t0, "user"),
        ("r1", AI_NAME, "A messaging system.", t0 + 900, "ai"),
        ("q-r2", "bob", "@ai tell me a story", t0 + 1000, "user"),
        ("r2", AI_NAME, "Once upon [incomplete]", t0 + 2000, "ai"),
        ("q-r3", "carol", "@ai hello?", t0 + 3000, "user"),
        ("n-r3", SYSTEM_NAME, "carol has used today's AI quota.", t0 + 3002, "system"),
    ]
    assert table(conn, "SELECT version FROM messages WHERE id = 'r1'") == [(completed_version,)]
    assert table(conn, "SELECT message_count, last_activity FROM rooms") == [(6, t0 + 3002)]
    assert table(conn, "SELECT reply_id, outcome, reason, requests FROM ai_replies"
                       " ORDER BY reply_id") == [
        ("r1", "completed", None, 1), ("r2", "failed", "timeout", 1), ("r3", "failed", "quota", 0),
    ]

    # The query API's page carries each message's kind.
    page, _ = queries.messages(conn, "lobby", 10, "oldest", None)
    assert [r["kind"] for r in page] == ["user", "ai", "user", "ai", "user", "system"]


def test_progress_events_write_nothing_and_are_no_dead_letters(tmp_path):
    conn = open_read_store(tmp_path / "read.db")
    stream = Stream(conn)
    room = open_room("busy")
    ask(room, "r1", "alice", "count to 500", ms("2026-03-01T12:00:00"))
    stream.commit(room)
    before = everything(conn)

    # 500 chunks over 50 commits, as a streaming reply appends them.
    stream_reply(room, "r1", [], deadline=0.0)
    for n in range(500):
        room.chunk(reply_id="r1", offset=n, text="x")
        if n % 10 == 9:
            assert stream.commit(room) == 0

    assert everything(conn) == before
    assert table(conn, "SELECT count(*) FROM dead_letters") == [(0,)]


def test_usage_is_per_user_and_utc_day_across_rooms(tmp_path):
    conn = open_read_store(tmp_path / "read.db")
    stream = Stream(conn)
    lobby, den = open_room("lobby"), open_room("den")

    # alice: a reply completed one millisecond before midnight UTC, and a failure
    # the provider was called for right at midnight, in another room.
    ask(lobby, "r1", "alice", "q1", ms("2026-03-01T23:59:00"))
    lobby.complete(reply_id="r1", user_id="alice", text="a1",
                   posted_at=ms("2026-03-01T23:59:59.999"), prompt_tokens=100, output_tokens=20)
    stream.commit(lobby)
    ask(den, "r2", "alice", "q2", ms("2026-03-01T23:59:59"))
    den.fail(reply_id="r2", user_id="alice", reason="cut", text="par" + INCOMPLETE_MARK,
             posted_at=ms("2026-03-02T00:00:00"), prompt_tokens=50, output_tokens=3,
             provider_called=True)
    stream.commit(den)
    # ... and one more on the second day, back in the lobby.
    ask(lobby, "r3", "alice", "q3", ms("2026-03-02T08:00:00"))
    lobby.complete(reply_id="r3", user_id="alice", text="a3",
                   posted_at=ms("2026-03-02T08:00:01"), prompt_tokens=7, output_tokens=0)
    stream.commit(lobby)

    # bob: refused before the provider was called (no request, no tokens: no row), and a
    # failure without a provider call that still reports tokens (counted, no request).
    ask(den, "r4", "bob", "q4", ms("2026-03-02T09:00:00"))
    den.fail(reply_id="r4", user_id="bob", reason="quota", text="",
             posted_at=ms("2026-03-02T09:00:00.001"), prompt_tokens=0, output_tokens=0,
             provider_called=False)
    ask(den, "r5", "bob", "q5", ms("2026-03-03T09:00:00"))
    den.fail(reply_id="r5", user_id="bob", reason="network", text="",
             posted_at=ms("2026-03-03T09:00:00.001"), prompt_tokens=9, output_tokens=0,
             provider_called=False)
    stream.commit(den)

    assert usage(conn) == [
        ("alice", "2026-03-01", 1, 120),
        ("alice", "2026-03-02", 2, 60),
        ("bob", "2026-03-03", 0, 9),
    ]


def test_a_malformed_ai_payload_is_a_dead_letter_and_the_rest_applies(tmp_path):
    conn = open_read_store(tmp_path / "read.db")
    stream = Stream(conn)
    room = open_room("lobby")
    ask(room, "r1", "alice", "q", ms("2026-03-01T12:00:00"))
    stream.commit(room)

    # One commit: a completion without user_id, a failure with negative tokens, a notice
    # without text, and a good completion after them.
    t = ms("2026-03-01T12:00:01")
    room.complete(reply_id="r1", user_id="alice", text="a", posted_at=t, prompt_tokens=1,
                  output_tokens=1)
    room.fail(reply_id="r9", user_id="alice", reason="cut", text="x", posted_at=t + 1,
              prompt_tokens=-5, output_tokens=0, provider_called=True)
    room.notice(message_id="n1", text="hi", posted_at=t + 2)
    room.complete(reply_id="r2", user_id="alice", text="fine", posted_at=t + 3,
                  prompt_tokens=2, output_tokens=3)
    body = json.loads(codec.encode(room.collect_events()))
    first = json.loads(body["events"][0][2])
    del first["user_id"]
    body["events"][0][2] = json.dumps(first)
    notice = json.loads(body["events"][2][2])
    del notice["text"]
    body["events"][2][2] = json.dumps(notice)
    msg_sequence = len(stream.messages) + 1
    assert stream.commit(room, json.dumps(body).encode()) == 3

    letters = table(conn, "SELECT sequence, event_index, error FROM dead_letters"
                          " ORDER BY event_index")
    assert [(s, i) for s, i, _ in letters] == [(msg_sequence, 0), (msg_sequence, 1),
                                               (msg_sequence, 2)]
    assert "user_id" in letters[0][2] and "prompt_tokens" in letters[1][2]
    assert "text" in letters[2][2]
    # Nothing of the bad events was written; the good one was.
    assert table(conn, "SELECT id FROM messages WHERE kind != 'user'") == [("r2",)]
    assert usage(conn) == [("alice", "2026-03-01", 1, 5)]


def test_re_projecting_a_room_counts_its_usage_once(tmp_path):
    conn = open_read_store(tmp_path / "read.db")
    stream = Stream(conn)
    lobby, den = open_room("lobby"), open_room("den")
    day = "2026-03-01"

    # alice's usage on one day comes from two rooms.
    for n, room in enumerate([lobby, den, lobby]):
        at = ms(f"{day}T10:00:00") + n * 1000
        ask(room, f"r{n}", "alice", f"q{n}", at)
        room.complete(reply_id=f"r{n}", user_id="alice", text=f"a{n}", posted_at=at + 500,
                      prompt_tokens=10, output_tokens=n)
        stream.commit(room)
    ask(den, "r9", "bob", "q9", ms(f"{day}T11:00:00"))
    den.fail(reply_id="r9", user_id="bob", reason="server", text="",
             posted_at=ms(f"{day}T11:00:01"), prompt_tokens=4, output_tokens=0,
             provider_called=True)
    stream.commit(den)
    ask(lobby, "r7", "carol", "q7", ms("2026-03-02T10:00:00"))
    lobby.complete(reply_id="r7", user_id="carol", text="a7",
                   posted_at=ms("2026-03-02T10:00:01"), prompt_tokens=1, output_tokens=1)
    stream.commit(lobby)
    projected = everything(conn)
    assert usage(conn) == [("alice", day, 3, 33), ("bob", day, 1, 4),
                           ("carol", "2026-03-02", 1, 2)]

    # A commit applied a second time (a redelivery the position check would skip) adds nothing.
    again = stream.of("lobby")[-1]
    with transaction(conn):
        project_commit(conn, ROOM_STREAM, again.subject, again.sequence, again.data)
    assert everything(conn) == projected

    # rebuild-room: the lobby's rows go and come back; alice is not counted twice.
    with transaction(conn):
        rebuilt = reproject_room(conn, "lobby", stream.of("lobby"), len(stream.messages))
    assert rebuilt.deleted["ai_replies"] == 3 and rebuilt.commits == 3
    assert everything(conn) == projected

    # It also repairs usage that drifted from the stream: a day's counts tampered, a
    # reply's row lost (with its day's counts wrong), a reply row the stream never had.
    conn.execute("UPDATE ai_usage_daily SET requests = 99, tokens = 1 WHERE user_id = 'alice'")
    conn.execute("DELETE FROM ai_replies WHERE reply_id = 'r7'")
    conn.execute("UPDATE ai_usage_daily SET requests = 5 WHERE user_id = 'carol'")
    conn.execute("INSERT INTO ai_replies VALUES ('lobby', 'ghost', 'dave', 'completed', NULL,"
                 " 0, '1970-01-01', 1, 1, 1)")
    conn.execute("INSERT INTO ai_usage_daily VALUES ('dave', '1970-01-01', 1, 2)")
    with transaction(conn):
        reproject_room(conn, "lobby", stream.of("lobby"), len(stream.messages))
    assert everything(conn) == projected

    # And the den alone, whose replies share alice's day with the lobby's.
    with transaction(conn):
        reproject_room(conn, "den", stream.of("den"), len(stream.messages))
    assert everything(conn) == projected

    # Equal, row for row, to a fresh replay of the whole stream.
    fresh = open_read_store(tmp_path / "fresh.db")
    with transaction(fresh):
        for msg in stream.messages:
            project_commit(fresh, ROOM_STREAM, msg.subject, msg.sequence, msg.data)
    assert everything(fresh) == projected


def test_the_room_aggregates_own_ai_events_project_as_the_stand_in_does(tmp_path):
    conn = open_read_store(tmp_path / "read.db")
    stream = Stream(conn)
    now_ms, now = int(time.time() * 1000), time.time()

    # The real Room: alice asks twice; the first reply completes, the second is cut off.
    deadlines = AiDeadlines(start_timeout=30, max_duration=60, stall_timeout=None)
    room = Room.open_public("lobby")
    room.join("s1", "alice")
    room.post("m1", "s1", "@ai hi", now_ms=now_ms, now=now, deadlines=deadlines, user_id="u1")
    room.post("m2", "s1", "@ai again", now_ms=now_ms + 1, now=now, deadlines=deadlines,
              user_id="u1")
    first = next(iter(room.ai))
    room.start_ai(first, "gemini-2.5-flash", "Gemini", now=now, deadlines=deadlines)
    room.append_ai(first, 0, "hel", now=now, deadlines=deadlines)
    room.append_ai(first, 3, "lo", now=now, deadlines=deadlines)
    room.complete_ai(first, 5, 10, 2, now_ms=now_ms + 5, now=now, deadlines=deadlines)
    second = next(iter(room.ai))
    room.start_ai(second, "gemini-2.5-flash", "Gemini", now=now, deadlines=deadlines)
    room.append_ai(second, 0, "par", now=now, deadlines=deadlines)
    room.fail_ai(second, "cut", "cut off", 3, 1, now_ms=now_ms + 9, now=now, deadlines=deadlines)
    assert stream.commit(room) == 0

    assert table(conn, "SELECT author, text, kind FROM messages WHERE kind != 'user'"
                       " ORDER BY timestamp") == [
        (AI_NAME, "hello", "ai"),
        (AI_NAME, "par" + INCOMPLETE_MARK, "ai"),
        (SYSTEM_NAME, "The AI could not answer alice: cut off", "system"),
    ]
    assert sum(r[2] for r in usage(conn)) == 2 and sum(r[3] for r in usage(conn)) == 16
