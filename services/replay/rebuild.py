"""Rebuilding read stores from the room stream: a whole new store (swapped in under the
running projector), or one room's rows in place.

Read stores are written only through `services.readstore`: the same migrations, the same
`project_commit`, the same position bookkeeping as the projector, so a rebuilt store is row
for row what the projector would have written.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import aclosing, suppress
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NATS

from services.readstore.projection import (
    ROOM_STREAM,
    forget_room,
    position,
    project_commit,
    record_position,
    recount_room_ai_usage,
)
from services.readstore.store import open_read_store
from services.readstore.uploads import UPLOAD_STREAM, project_upload_commit
from services.replay.roomstream import (
    Progress,
    ReplayError,
    last_sequence,
    room_messages,
)
from services.runtime.eventstore import StoredMessage, direct_get

COMMITS_PER_TRANSACTION = 5000


@dataclass
class Replayed:
    path: Path
    position: int  # the stream sequence the store is recorded at
    commits: int = 0
    dead_letters: int = 0


async def replay_into(
    nc: NATS, path: Path, upto: int, progress: Progress | None = None, uploads_upto: int = 0
) -> tuple[sqlite3.Connection, Replayed]:
    """A new read store at `path` (migrated by `open_read_store`) holding every commit of
    the room stream with a sequence <= `upto`, recorded at position `upto`, and every
    commit of the upload stream (EVT_UPLOAD: the `uploads` table) <= `uploads_upto`,
    recorded at that.

    Commits are projected in transactions of COMMITS_PER_TRANSACTION, each recording the
    position it reached, as the projector does. Returns the open connection.
    """
    path = Path(path)
    if path.exists():
        raise ReplayError(f"{path} already exists; a replay goes into a new file")
    conn = open_read_store(path)
    result = Replayed(path, upto)
    try:
        await _replay_stream(conn, nc, ROOM_STREAM, upto, project_commit, result, progress)
        if uploads_upto > 0:
            await _replay_stream(conn, nc, UPLOAD_STREAM, uploads_upto, project_upload_commit, result, None)
        if progress:
            progress(upto)
    except BaseException:
        conn.close()
        remove_database(path)
        raise
    return conn, result


Project = Callable[[sqlite3.Connection, str, str, int, bytes], int]


async def _replay_stream(
    conn: sqlite3.Connection, nc: NATS, stream: str, upto: int, project: Project,
    result: Replayed, progress: Progress | None,
) -> None:
    batch: list[StoredMessage] = []

    def flush(final: bool = False) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for msg in batch:
                result.dead_letters += project(conn, stream, msg.subject, msg.sequence, msg.data)
            # The last transaction records `upto` even if the stream's last messages
            # are gone (deleted): the projector goes on after it.
            record_position(conn, stream, upto if final else batch[-1].sequence)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        result.commits += len(batch)
        if progress and batch:
            progress(batch[-1].sequence)
        batch.clear()

    if upto > 0:
        async with aclosing(direct_get(nc, stream, 1)) as messages:
            async for msg in messages:
                if msg.sequence > upto:
                    break
                batch.append(msg)
                if len(batch) >= COMMITS_PER_TRANSACTION:
                    flush()
    flush(final=True)


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


async def rebuild_store(
    nc: NATS, db: Path, out: Path | None = None, swap: bool = True,
    progress: Progress | None = None, started: Callable[[int], None] | None = None,
) -> Replayed:
    """Replay the whole room and upload streams (up to their last sequences now) into a new file next to
    `db`, and swap it in unless `swap` is False. The running projector continues from the
    new file's recorded position."""
    out = Path(out) if out else rebuild_path(db)
    upto = await last_sequence(nc)
    uploads_upto = await last_sequence(nc, UPLOAD_STREAM)
    if started:
        started(upto)
    conn, result = await replay_into(nc, out, upto, progress, uploads_upto)
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
