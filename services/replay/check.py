"""Comparing a read store with a fresh replay of the room and upload streams, table by table
and row by row, and listing its dead letters."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from services.readstore.projection import ROOM_STREAM, position
from services.readstore.store import open_read_store
from services.readstore.uploads import UPLOAD_STREAM
from services.replay.rebuild import replay_into
from services.replay.roomstream import Progress, last_sequence

# Tables a replay does not reproduce: where the projector is, when migrations ran.
UNCOMPARED_TABLES = frozenset({"projector_positions", "d1_migrations"})
UNCOMPARED_COLUMNS = {"dead_letters": frozenset({"recorded_at"})}  # when, not what


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


async def check_store(
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
        uploads_upto = min(position(live, UPLOAD_STREAM), await last_sequence(nc, UPLOAD_STREAM))
        if started:
            started(reached)
        with tempfile.TemporaryDirectory(prefix="durachat-check-") as folder:
            upto = min(reached, stream_last)
            replay, _ = await replay_into(nc, Path(folder) / "replay.db", upto, progress, uploads_upto)
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
