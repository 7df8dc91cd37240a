"""The replay tooling's logic; `main.py` is only its command line.

Everything here reads the room stream (`EVT_ROOM`) with batched direct gets, so no consumer
is left behind on the server, and writes read stores only through `services.readstore`:
the same migrations, the same `project_commit`, the same position bookkeeping as the
projector, so a rebuilt store is row for row what the projector would have written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from contracts.keys import is_private_room_id
from contracts.room import MAX_NAME_LENGTH
from contracts.subjects import ROOM, event_subject
from services.readstore.projection import (
    ROOM_STREAM,
    CommitUnreadable,
    decode_commit,
    forget_room,
    position,
    project_commit,
    record_position,
    recount_room_ai_usage,
)
from services.readstore.store import open_read_store
from services.room.domainmodel import room_id
from services.runtime.eventstore import (
    MSG_ID,
    WRONG_LAST_SEQUENCE,
    CommitCodec,
    ObjectEventStore,
    StoredMessage,
    direct_get,
)

COMMITS_PER_TRANSACTION = 5000
# Tables a replay does not reproduce: where the projector is, and when migrations ran.
UNCOMPARED_TABLES = frozenset({"projector_positions", "d1_migrations"})
UNCOMPARED_COLUMNS = {"dead_letters": frozenset({"recorded_at"})}  # when, not what

Progress = Callable[[int], None]  # called with the stream sequence reached


class ReplayError(Exception):
    """A refusal or failure the user should read as one line (exit code 1)."""

    exit_code = 1


class Unavailable(ReplayError):
    """NATS cannot be reached (exit code 2, as for an unusable read store)."""

    exit_code = 2


# --- NATS ------------------------------------------------------------------------------------


@asynccontextmanager
async def connected(url: str):
    """A NATS connection that fails fast and quietly when the server is not there."""

    async def quiet(exc: Exception) -> None:  # nats-py would log every failed attempt
        pass

    servers = [s.strip() for s in url.split(",") if s.strip()]
    try:
        # nats-py retries a refused initial connect unless the server is given up on, which
        # needs max_reconnect_attempts > 0; the overall timeout covers the rest.
        nc = await asyncio.wait_for(nats.connect(
            servers, allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.2,
            connect_timeout=3, error_cb=quiet, name="durachat-replay",
        ), timeout=10)
    except Exception as exc:  # refused, unresolvable, timed out, not NATS: all "unreachable"
        raise Unavailable(f"cannot reach NATS at {url}: {exc or type(exc).__name__}") from exc
    try:
        yield nc
    finally:
        with suppress(Exception):
            await nc.close()


async def last_sequence(nc: NATS) -> int:
    """The room stream's last sequence now (0 when the stream does not exist yet)."""
    try:
        return (await nc.jetstream().stream_info(ROOM_STREAM)).state.last_seq
    except nats.js.errors.NotFoundError:
        return 0


async def room_messages(nc: NATS, name: str, after: int = 0) -> list[StoredMessage]:
    """Every stored commit of room `name` after sequence `after`, with sequence and time."""
    if await last_sequence(nc) == 0:
        return []
    return await ObjectEventStore(nc, ROOM).read_messages(name, after=after)


# --- time ------------------------------------------------------------------------------------

_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
    r"\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?$"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def parse_time_ns(text: str) -> int:
    """ns since the epoch of an ISO-8601 / RFC 3339 time: `2026-11-27T10:00Z`,
    `2026-11-27T10:00:00.123456789+01:00`, `2026-11-27`. Without an offset: UTC.
    (`Nats-Time-Stamp` has nanoseconds, more than `datetime` holds.)"""
    match = _TIME.match(text.strip())
    if not match:
        raise ValueError(f"not an ISO-8601 time: {text!r} (e.g. 2026-11-27T10:00Z)")
    day, hour, minute, second, fraction, offset = match.groups()
    tz = dt.UTC
    if offset and offset not in "Zz":
        digits = offset[1:].replace(":", "")
        delta = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
        tz = dt.timezone(delta if offset[0] == "+" else -delta)
    try:
        moment = dt.datetime.fromisoformat(
            f"{day}T{hour or '00'}:{minute or '00'}:{second or '00'}"
        ).replace(tzinfo=tz)
    except ValueError as exc:
        raise ValueError(f"not a valid time: {text!r} ({exc})") from exc
    seconds = (moment - _EPOCH) // dt.timedelta(seconds=1)
    return seconds * 1_000_000_000 + int((fraction or "").ljust(9, "0"))


def display_time(stamp: str) -> str:
    """A stored time for people: `2026-11-27 10:00:00.123` (UTC)."""
    try:
        ns = parse_time_ns(stamp)
    except ValueError:
        return stamp
    moment = _EPOCH + dt.timedelta(microseconds=ns // 1000)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def display_time_ms(ms: int) -> str:
    """A time in ms since the epoch (message timestamps) as `display_time` shows it."""
    moment = _EPOCH + dt.timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


# --- rebuilding read stores ------------------------------------------------------------------


@dataclass
class Replayed:
    path: Path
    position: int  # the stream sequence the store is recorded at
    commits: int = 0
    dead_letters: int = 0


async def replay_into(
    nc: NATS, path: Path, upto: int, progress: Progress | None = None
) -> tuple[sqlite3.Connection, Replayed]:
    """A new read store at `path` (migrated by `open_read_store`) holding every commit of
    the room stream with a sequence <= `upto`, recorded at position `upto`.

    Commits are projected in transactions of COMMITS_PER_TRANSACTION, each recording the
    position it reached, as the projector does. Returns the open connection.
    """
    path = Path(path)
    if path.exists():
        raise ReplayError(f"{path} already exists; a replay goes into a new file")
    conn = open_read_store(path)
    result = Replayed(path, upto)
    try:
        batch: list[StoredMessage] = []

        def flush(final: bool = False) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for msg in batch:
                    result.dead_letters += project_commit(
                        conn, ROOM_STREAM, msg.subject, msg.sequence, msg.data
                    )
                # The last transaction records `upto` even if the stream's last messages
                # are gone (deleted): the projector goes on after it.
                record_position(conn, ROOM_STREAM, upto if final else batch[-1].sequence)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            result.commits += len(batch)
            if progress and batch:
                progress(batch[-1].sequence)
            batch.clear()

        if upto > 0:
            async with aclosing(direct_get(nc, ROOM_STREAM, 1)) as messages:
                async for msg in messages:
                    if msg.sequence > upto:
                        break
                    batch.append(msg)
                    if len(batch) >= COMMITS_PER_TRANSACTION:
                        flush()
        flush(final=True)
        if progress:
            progress(upto)
    except BaseException:
        conn.close()
        remove_database(path)
        raise
    return conn, result


def seal(conn: sqlite3.Connection) -> None:
    """Make the database one self-contained file and close it: everything checkpointed
    out of the WAL, and rollback-journal mode, so no -wal/-shm file goes with it."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    conn.close()
    if mode.lower() != "delete":
        raise ReplayError(f"could not leave WAL mode (journal_mode is {mode})")


def remove_database(path: Path) -> None:
    for name in (str(path), f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with suppress(FileNotFoundError):
            os.unlink(name)


def swap_in(new: Path, db: Path) -> None:
    """Put the sealed database `new` in place of `db`, atomically, under a running projector.

    SQLite names a database's side files after its *path*: `db-wal`, `db-shm` (and
    `db-journal`). After `os.replace(new, db)` the path names the new inode, but `db-wal`
    and `db-shm` still hold the old file's WAL and wal-index, and SQLite does not check
    which database a WAL belongs to: whoever opens `db` next finds a `db-wal`, opens the
    database in WAL mode and reads the OLD file's pages out of it (tried: the new file then
    reads as the old one). Closing the old connection does not clean up either: SQLite sees
    that its database file was moved and skips the checkpoint and the delete on close.

    So the old side files are unlinked first, then the new file is renamed over the path:
    - The new file was sealed (checkpointed, journal_mode=DELETE, closed), so it needs no
      side file of its own and is complete the instant the rename makes it visible.
    - The projector's open connection keeps using the old database, WAL and wal-index
      through its file descriptors (unlinked files live on while open); whatever it still
      commits there is thrown away with the old file, and nothing it does touches the new
      one. At its next batch it sees the inode change, closes the old connection (which
      then deletes nothing, as above), opens the new file, switches it to WAL (fresh side
      files) and continues from the position recorded in it.
    - Any process opening `db` after the rename sees the new file and no stale WAL. The
      one window left is the microseconds between the unlink and the rename: a *writer*
      opening the old file exactly then would create side files the new file inherits;
      the projector is the only writer and it does not reopen the old file.
    A hot `db-journal` would be rolled back into the new file the same way; it goes too.
    """
    new, db = Path(new), Path(db)
    for suffix in ("-wal", "-shm", "-journal"):
        with suppress(FileNotFoundError):
            os.unlink(f"{db}{suffix}")
    os.replace(new, db)
    directory = os.open(db.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def rebuild_path(db: Path) -> Path:
    return Path(db).with_name(f"{Path(db).name}.rebuild-{time.strftime('%Y%m%dT%H%M%S')}")


async def rebuild(
    nc: NATS, db: Path, out: Path | None = None, swap: bool = True,
    progress: Progress | None = None, started: Callable[[int], None] | None = None,
) -> Replayed:
    """Replay the whole room stream (up to its last sequence now) into a new file next to
    `db`, and swap it in unless `swap` is False. The running projector continues from the
    new file's recorded position."""
    out = Path(out) if out else rebuild_path(db)
    upto = await last_sequence(nc)
    if started:
        started(upto)
    conn, result = await replay_into(nc, out, upto, progress)
    try:
        seal(conn)
    except BaseException:
        remove_database(out)
        raise
    if swap:
        swap_in(out, db)
        result.path = Path(db)
    return result


@dataclass
class RoomRebuilt:
    room: str
    position: int
    commits: int
    dead_letters: int
    deleted: dict[str, int]


def reproject_room(
    conn: sqlite3.Connection, name: str, commits: Iterable[StoredMessage], upto: int
) -> RoomRebuilt:
    """Inside the caller's transaction: delete room `name`'s rows and project its `commits`
    with a sequence <= `upto` again. AI usage is per user across rooms, so the days the
    room's replies count in are re-counted from `ai_replies`, never re-added on top."""
    deleted = forget_room(conn, name)
    applied = dead = 0
    for msg in commits:
        if msg.sequence > upto:
            break
        dead += project_commit(conn, ROOM_STREAM, msg.subject, msg.sequence, msg.data)
        applied += 1
    recount_room_ai_usage(conn, name)  # also repairs a day that had drifted from its replies
    return RoomRebuilt(name, upto, applied, dead, deleted)


async def rebuild_room(nc: NATS, db: Path, name: str, attempts: int = 20) -> RoomRebuilt:
    """Delete room `name`'s rows and re-project its commits up to the store's recorded
    position, in ONE transaction: the projector (a concurrent writer) waits for it and
    never sees a half-rebuilt room (see `reproject_room`).

    The commits are read from NATS *before* the transaction, so it stays short (the
    projector waits at most its busy timeout). They cover every commit of the room up to
    the stream sequence measured before the read; if the projector has recorded a position
    beyond that by the time the transaction starts, the rest is read and it is tried again.
    """
    conn = open_read_store(db, create=False)
    try:
        fetched: list[StoredMessage] = []
        for _ in range(attempts):
            covered = await last_sequence(nc)
            after = fetched[-1].sequence if fetched else 0
            fetched += await room_messages(nc, name, after=after)
            conn.execute("BEGIN IMMEDIATE")
            try:
                reached = position(conn, ROOM_STREAM)
                if reached > covered:
                    conn.execute("ROLLBACK")
                    continue
                result = reproject_room(conn, name, fetched, reached)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return result
        raise ReplayError("the projector kept moving ahead of the room's commits; try again")
    finally:
        conn.close()


# --- comparing read stores -------------------------------------------------------------------


@dataclass
class TableDiff:
    table: str
    live_rows: int = 0
    replay_rows: int = 0
    differences: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )
    return {r[0] for r in rows} - UNCOMPARED_TABLES


def _columns(conn: sqlite3.Connection, table: str) -> tuple[list[str], list[str]]:
    """(columns, primary-key columns in key order) of `table`."""
    info = conn.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
    columns = [r[1] for r in info]
    key = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
    return columns, key or columns


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_RANK = {type(None): 0, int: 1, float: 1, str: 2, bytes: 3}


def _order(values: tuple) -> tuple:
    """Python ordering that matches SQLite's ORDER BY (BINARY collation) across types."""
    return tuple((_RANK.get(type(v), 4), v) for v in values)


def compare_table(
    live: sqlite3.Connection, replay: sqlite3.Connection, table: str, limit: int
) -> TableDiff:
    """Row by row, by primary key, ignoring UNCOMPARED_COLUMNS; a merge of two ordered scans."""
    diff = TableDiff(table)
    columns, key = _columns(replay, table)
    live_columns, _ = _columns(live, table)
    if live_columns != columns:
        diff.differences = 1
        diff.note = f"columns differ: live {live_columns}, replay {columns}"
        return diff
    ignored = UNCOMPARED_COLUMNS.get(table, frozenset())
    columns = [c for c in columns if c not in ignored]
    positions = [columns.index(k) for k in key]
    sql = (f"SELECT {', '.join(map(_quote, columns))} FROM {_quote(table)}"
           f" ORDER BY {', '.join(map(_quote, key))}")

    def scan(conn: sqlite3.Connection) -> Iterator[tuple]:
        for row in conn.execute(sql):
            yield tuple(row)

    def keyed(row: tuple) -> dict[str, Any]:
        return {k: row[i] for k, i in zip(key, positions)}

    def note(kind: str, ours: tuple | None, theirs: tuple | None) -> None:
        diff.differences += 1
        if len(diff.examples) >= limit:
            return
        row = ours if ours is not None else theirs
        example: dict[str, Any] = {"kind": kind, "key": keyed(row)}
        if ours is not None and theirs is not None:
            example["columns"] = {
                c: {"live": a, "replay": b} for c, a, b in zip(columns, ours, theirs) if a != b
            }
        else:
            example["row"] = dict(zip(columns, row))
        diff.examples.append(example)

    mine, theirs = scan(live), scan(replay)
    a, b = next(mine, None), next(theirs, None)
    while a is not None or b is not None:
        ka = _order(tuple(a[i] for i in positions)) if a is not None else None
        kb = _order(tuple(b[i] for i in positions)) if b is not None else None
        if b is None or (a is not None and ka < kb):
            note("only in live", a, None)
            diff.live_rows += 1
            a = next(mine, None)
        elif a is None or kb < ka:
            note("missing from live", None, b)
            diff.replay_rows += 1
            b = next(theirs, None)
        else:
            if a != b:
                note("differs", a, b)
            diff.live_rows += 1
            diff.replay_rows += 1
            a, b = next(mine, None), next(theirs, None)
    return diff


@dataclass
class CheckResult:
    position: int  # the live store's recorded position: the replay went exactly this far
    stream_last: int
    tables: list[TableDiff]
    dead_letters: list[dict[str, Any]]

    @property
    def equal(self) -> bool:
        return not any(t.differences for t in self.tables) and self.position <= self.stream_last


async def check(
    nc: NATS, db: Path, limit: int = 10, progress: Progress | None = None,
    started: Callable[[int], None] | None = None,
) -> CheckResult:
    """Compare the read store at `db` with a fresh replay of the stream up to the store's
    own recorded position (it may be ahead of or behind the stream's end right now)."""
    live = open_read_store(db, readonly=True)
    try:
        # One read transaction for the whole check: the projector may go on writing, this
        # sees the store exactly as it was at the position read here.
        live.execute("BEGIN")
        reached = position(live, ROOM_STREAM)
        stream_last = await last_sequence(nc)
        if started:
            started(reached)
        with tempfile.TemporaryDirectory(prefix="durachat-check-") as folder:
            upto = min(reached, stream_last)
            replay, _ = await replay_into(nc, Path(folder) / "replay.db", upto, progress)
            try:
                tables = [
                    compare_table(live, replay, t, limit) if t in _tables(live) else
                    TableDiff(t, differences=1, note="table missing from the live store")
                    for t in sorted(_tables(replay))
                ]
                tables += [
                    TableDiff(t, differences=1, note="table the replay does not have")
                    for t in sorted(_tables(live) - _tables(replay))
                ]
            finally:
                replay.close()
        letters = [
            dict(r) for r in live.execute(
                "SELECT stream, sequence, event_index, subject, error FROM dead_letters"
                " ORDER BY stream, sequence, event_index"
            )
        ]
        live.execute("ROLLBACK")
    finally:
        live.close()
    return CheckResult(reached, stream_last, tables, letters)


# --- a room's history ------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (UUID, Decimal)):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def event_rows(msg: StoredMessage) -> list[dict[str, Any]]:
    """The events of one stored commit, decoded without the domain classes (as the
    projector does); an undecodable commit or event is a row with an `error`."""
    base = {"sequence": msg.sequence, "time": msg.time}
    try:
        events = decode_commit(msg.data)
    except CommitUnreadable as exc:
        return [{**base, "error": str(exc), "data": msg.data.decode("utf-8", "replace")}]
    rows = []
    for index, event in enumerate(events):
        if isinstance(event, Exception):
            rows.append({**base, "index": index, "error": f"{type(event).__name__}: {event}"})
        else:
            rows.append({**base, "version": event.version, "event": event.name,
                         "fields": jsonable(event.data)})
    return rows


@dataclass
class RoomState:
    room: str
    sequence: int = 0  # the last commit applied
    time: str = ""  # its time
    aggregate: Any = None
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        room = self.aggregate
        if room is None:
            return {"room": self.room, "exists": False, "sequence": self.sequence,
                    "skipped": self.skipped}
        return {
            "room": self.room,
            "exists": True,
            "sequence": self.sequence,
            "time": self.time,
            "version": room.version,
            "private": room.private,
            "expired": room.expired,
            "alarm_at": room.alarm_at,
            "members": list(room.members.values()),
            "messages": room.messages,
            "skipped": self.skipped,
        }


def room_state(
    name: str, messages: Iterable[StoredMessage], seq: int | None = None, at_ns: int | None = None
) -> RoomState:
    """The Room aggregate replayed from its commits with sequence <= `seq` / stored at or
    before `at_ns` (all when neither). A commit or event that does not decode or apply is
    skipped and listed."""
    codec = CommitCodec()
    state = RoomState(name)
    for msg in messages:
        if seq is not None and msg.sequence > seq:
            break
        if at_ns is not None and parse_time_ns(msg.time) > at_ns:
            break
        try:
            events = codec.decode(msg.data)
        except Exception as exc:
            state.skipped.append(
                {"sequence": msg.sequence, "error": f"{type(exc).__name__}: {exc}"}
            )
            continue
        for event in events:
            try:
                state.aggregate = event.mutate(state.aggregate)
            except Exception as exc:
                state.skipped.append(
                    {"sequence": msg.sequence, "error": f"{type(exc).__name__}: {exc}"}
                )
        state.sequence, state.time = msg.sequence, msg.time
    return state


# --- export / import -------------------------------------------------------------------------


def export_line(room: str, msg: StoredMessage) -> str:
    """One commit as one JSON line: where and when it was stored, and its events as stored
    (topic, version, state JSON). A commit that is not the stored format is kept as text."""
    line: dict[str, Any] = {"room": room, "sequence": msg.sequence, "time": msg.time}
    try:
        body = json.loads(msg.data)
        line["id"] = body["id"]
        line["events"] = [
            {"topic": topic, "version": version, "state": state}
            for topic, version, state in body["events"]
        ]
    except (ValueError, KeyError, TypeError) as exc:
        line = {**line, "error": f"not a stored commit: {exc}",
                "data": msg.data.decode("utf-8", "replace")}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Imported:
    room: str
    commits: int
    events: int
    skipped: int
    last_sequence: int


def _is_created(topic: str) -> bool:
    return topic.rsplit(".", 1)[-1].rsplit(":", 1)[-1] == "Created"


def prepare_import(lines: Iterable[str], new: str) -> tuple[list[bytes], int]:
    """The commits of an export, rewritten for room `new`: the originator id becomes
    `room_id(new)` and the Created event's `name` becomes `new`. Checked before anything is
    written: it must start with Created and its versions must follow on. Returns the
    encoded commits and how many unreadable commits (exported as text) were left out."""
    if not new:
        raise ReplayError("the new room needs a name")
    new_id = str(room_id(new))
    commits: list[bytes] = []
    skipped = 0
    version = 0
    private: bool | None = None
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            if "error" in line and "events" not in line:
                skipped += 1
                continue
            events = []
            for event in line["events"]:
                topic, ver, state = event["topic"], int(event["version"]), event["state"]
                if ver != version + 1:
                    raise ReplayError(
                        f"line {number}: version {ver} does not follow {version}; "
                        "an export of a whole room has versions 1, 2, 3, ..."
                    )
                version = ver
                if _is_created(topic):
                    fields = json.loads(state)
                    fields["name"] = new
                    private = bool(fields.get("private"))
                    state = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
                elif ver == 1:
                    raise ReplayError(f"line {number}: the export does not start with Created")
                events.append([topic, ver, state])
        except ReplayError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ReplayError(f"line {number}: not an exported commit ({exc})") from exc
        if events:
            commits.append(json.dumps({"id": new_id, "events": events},
                                      separators=(",", ":")).encode())
    if not commits:
        raise ReplayError("nothing to import: the file holds no commits")
    if private and not is_private_room_id(new):
        raise ReplayError(f"the exported room is private; import it under a private room id "
                          f"(64 lowercase hex), not {new!r}")
    if not private and (is_private_room_id(new) or len(new) > MAX_NAME_LENGTH):
        raise ReplayError(f"{new!r} cannot name a public room (at most {MAX_NAME_LENGTH} "
                          "characters, and not 64 hex)")
    return commits, skipped


async def import_room(
    nc: NATS, lines: Iterable[str], new: str, progress: Progress | None = None
) -> Imported:
    """Append an export's commits to room `new`, which must not exist: each append names
    the subject sequence it follows (0 for the first), so a room that exists, or one that
    someone starts using during the import, is refused by the server itself."""
    commits, skipped = prepare_import(lines, new)
    store = ObjectEventStore(nc, ROOM)
    await store.ensure_stream()
    subject = event_subject(ROOM, new)
    js = nc.jetstream()
    try:
        last = await js.get_last_msg(ROOM_STREAM, subject, direct=True)
    except nats.js.errors.NotFoundError:
        last = None
    if last is not None:
        raise ReplayError(f"room {new!r} already exists (last commit at sequence {last.seq}); "
                          "import into a room that has no events")
    expected = 0
    events = 0
    for index, data in enumerate(commits):
        headers = {
            "Nats-Expected-Last-Subject-Sequence": str(expected),
            MSG_ID: f"import:{new}:{index}",
        }
        try:
            ack = await js.publish(subject, data, headers=headers)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                what = "already exists" if index == 0 else "was written to during the import"
                raise ReplayError(f"room {new!r} {what}; stopped after {index} commits") from exc
            raise
        expected = ack.seq
        events += len(json.loads(data)["events"])
        if progress:
            progress(index + 1)
    return Imported(new, len(commits), events, skipped, expected)
