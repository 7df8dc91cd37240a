"""`durachat-replay`: rebuild read models from the event streams, and look at a room's history.

A thin command line over the jobs in `services.replay` (`rebuild`, `check`, `history`,
`transfer`): options in, rich tables and progress bars (or JSON) out.

Exit codes, one rule for every command: 0 done; 1 what was asked for does not exist or the
check failed (an unknown room, a differing store, a refused import); 2 a usage error (a bad
option or argument); 3 what it needs cannot be reached or used (NATS, the read store).
Every failure is one line on stderr.

Where NATS and the read store are: --nats / --db, else DURACHAT_NATS_URL / DURACHAT_READ_DB,
else what the running `make run` recorded in <data dir>/run.json (DURACHAT_DATA_DIR,
default ./data), else nats://127.0.0.1:4222 and data/read.db.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import nats.errors
import nats.js.errors
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from contracts.room import HISTORY_LENGTH
from services.readstore.store import ReadStoreError, open_read_store
from services.replay import check, history, rebuild, transfer
from services.replay.roomstream import (
    ReplayError,
    connected,
    display_time,
    display_time_ms,
    jsonable,
    parse_time_ns,
)
from services.runtime.eventstore import DirectGetError
from services.runtime.settings import RuntimeSettings
from services.settings import ReadStore

app = typer.Typer(
    name="durachat-replay",
    help="Rebuild durachat's read models from the event streams; inspect, export and import "
    "a room's history.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
T = TypeVar("T")


EXIT_NOT_FOUND = 1  # also: a check failed, a refusal
EXIT_USAGE = 2  # click's own code for a usage error
EXIT_UNREACHABLE = 3  # NATS or the read store cannot be reached or used


class ReplaySettings(RuntimeSettings, ReadStore):
    """Where the streams and the read store are, as the services read it."""


@dataclass
class Options:
    nats: str
    db: Path
    nats_from: str = ""  # where the NATS URL came from, when not from a flag or the env


def recorded_system() -> tuple[dict[str, Any], Path] | None:
    """What the running `make run` recorded in <data dir>/run.json, and that file."""
    path = Path(os.environ.get("DURACHAT_DATA_DIR") or "data") / "run.json"
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return (value, path) if isinstance(value, dict) else None


@app.callback()
def options(
    ctx: typer.Context,
    nats_url: Annotated[str | None, typer.Option(
        "--nats", metavar="URL",
        help="NATS server(s), comma-separated [default: DURACHAT_NATS_URL].")] = None,
    db: Annotated[Path | None, typer.Option(
        "--db", metavar="PATH",
        help="The read store (SQLite) the projector writes [default: DURACHAT_READ_DB].")] = None,
) -> None:
    # The defaults are the settings every service reads (one place for each), then what the
    # running system recorded.
    settings = ReplaySettings()
    opts = Options(nats_url or settings.nats_url, db or settings.read_db)
    recorded = recorded_system()
    if recorded is not None:
        run, path = recorded
        if nats_url is None and "nats_url" not in settings.model_fields_set \
                and isinstance(run.get("nats_url"), str):
            opts.nats, opts.nats_from = run["nats_url"], f" (from {path})"
        if db is None and "read_db" not in settings.model_fields_set \
                and isinstance(run.get("read_db"), str):
            opts.db = Path(run["read_db"])
    ctx.obj = opts


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run one command's coroutine; known failures become one line and an exit code."""
    try:
        return asyncio.run(work())
    except ReadStoreError as exc:
        fail(str(exc), EXIT_UNREACHABLE)
    except ReplayError as exc:
        fail(str(exc), exc.exit_code)
    except (nats.errors.Error, nats.js.errors.Error, DirectGetError) as exc:
        fail(f"NATS: {str(exc) or type(exc).__name__}", EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def fail(message: str, code: int) -> None:
    err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


@contextmanager
def progress_bar(what: str):
    """A rich progress bar on stderr (drawn only on a terminal); yields set_total, advance_to."""
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True,
    )
    task = bar.add_task(what, total=None)
    with bar:
        yield (lambda total: bar.update(task, total=total),
               lambda done: bar.update(task, completed=done))


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(jsonable(value), ensure_ascii=False) + "\n")
    sys.stdout.flush()


# --- rebuilding ------------------------------------------------------------------------------


@app.command("rebuild")
def rebuild_command(
    ctx: typer.Context,
    out_path: Annotated[Path | None, typer.Option(
        "--out", metavar="PATH",
        help="Where to build the new store (default: next to --db, <db>.rebuild-<time>).")] = None,
    no_swap: Annotated[bool, typer.Option(
        "--no-swap", help="Leave the new store at --out; do not replace --db.")] = False,
) -> None:
    """Replay the whole room stream into a NEW read store and swap it in for --db.

    The running projector notices the new file and continues from the position recorded
    in it. The old store is neither read nor needed: a corrupt one is rebuilt too.
    """
    opts: Options = ctx.obj

    async def work() -> rebuild.Replayed:
        async with connected(opts.nats, opts.nats_from) as nc:
            with progress_bar("replaying EVT_ROOM") as (set_total, advance_to):
                return await rebuild.rebuild_store(
                    nc, opts.db, out_path, swap=not no_swap, progress=advance_to,
                    started=set_total,
                )

    result = run(work)
    where = f"swapped in as {result.path}" if not no_swap else f"left at {result.path} (--no-swap)"
    out.print(f"rebuilt {result.commits} commits up to sequence {result.position}"
              f" ({result.dead_letters} dead letters); {where}")


@app.command("rebuild-room")
def rebuild_room_command(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The room's name or id.")]
) -> None:
    """Delete one room's rows and re-project its commits, in one transaction."""
    opts: Options = ctx.obj

    async def work() -> rebuild.RoomRebuilt:
        open_read_store(opts.db, create=False).close()  # an unusable store: exit 2 first
        async with connected(opts.nats, opts.nats_from) as nc:
            return await rebuild.rebuild_room(nc, opts.db, name)

    result = run(work)
    if not result.commits and not any(result.deleted.values()):
        fail(f"room {name} has no events and no rows in {opts.db}", EXIT_NOT_FOUND)
    deleted = ", ".join(f"{n} {table}" for table, n in result.deleted.items())
    out.print(f"room {escape(name)}: deleted {deleted}; re-projected {result.commits} commits"
              f" up to sequence {result.position} ({result.dead_letters} dead letters)")


@app.command("check")
def check_command(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="Differences shown per table.")] = 10,
) -> None:
    """Compare --db with a fresh replay up to its recorded position; exit 1 if they differ.

    Compares every table row by row (not projector_positions, nor when dead letters were
    recorded) and lists the dead letters.
    """
    opts: Options = ctx.obj

    async def work() -> check.CheckResult:
        open_read_store(opts.db, readonly=True).close()
        async with connected(opts.nats, opts.nats_from) as nc:
            with progress_bar("replaying EVT_ROOM") as (set_total, advance_to):
                return await check.check_store(nc, opts.db, limit, progress=advance_to,
                                               started=set_total)

    result = run(work)
    summary = Table(title=f"{opts.db} vs a replay up to sequence {result.position}")
    for column in ("table", "live rows", "replay rows", "differences"):
        summary.add_column(column, justify="left" if column == "table" else "right")
    for diff in result.tables:
        style = "red" if diff.differences else "green"
        summary.add_row(diff.table, str(diff.live_rows), str(diff.replay_rows),
                        f"[{style}]{diff.differences}[/{style}]")
    out.print(summary)
    for diff in result.tables:
        if diff.note:
            out.print(f"[red]{diff.table}[/red]: {escape(diff.note)}")
        if diff.examples:
            table = Table(title=f"{diff.table}: first {len(diff.examples)} of {diff.differences}"
                                " differences")
            for column in ("kind", "key", "live / replay"):
                table.add_column(column)
            for example in diff.examples:
                key = ", ".join(f"{k}={v!r}" for k, v in example["key"].items())
                if "columns" in example:
                    detail = "\n".join(f"{c}: {v['live']!r} / {v['replay']!r}"
                                       for c, v in example["columns"].items())
                else:
                    detail = json.dumps(example["row"], ensure_ascii=False, default=str)
                table.add_row(example["kind"], escape(key), escape(detail))
            out.print(table)
    if result.position > result.stream_last:
        out.print(f"[red]the store is recorded at sequence {result.position}, beyond the "
                  f"stream's last sequence {result.stream_last}: it is not this stream's[/red]")
    elif result.stream_last > result.position:
        out.print(f"(the projector is {result.stream_last - result.position} commits behind "
                  "the stream; compared at its position)")
    if result.dead_letters:
        letters = Table(title=f"{len(result.dead_letters)} dead letters")
        for column in ("sequence", "event", "subject", "error"):
            letters.add_column(column)
        for letter in result.dead_letters:
            index = letter["event_index"]
            letters.add_row(str(letter["sequence"]), "commit" if index < 0 else str(index),
                            escape(letter["subject"]), escape(letter["error"]))
        out.print(letters)
    else:
        out.print("no dead letters")
    if result.equal:
        out.print("[green]the read store equals a replay[/green]")
    else:
        out.print("[red]the read store differs from a replay[/red]")
        raise typer.Exit(1)


# --- a room's history ------------------------------------------------------------------------


@app.command("state")
def state_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The room's name or id.")],
    seq: Annotated[int | None, typer.Option(
        "--seq", min=0, help="As of this stream sequence (commits <= N).")] = None,
    at: Annotated[str | None, typer.Option(
        "--at", metavar="TIME",
        help="As of this time, ISO-8601 (2026-11-27T10:00Z); no offset means UTC.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    last: Annotated[int, typer.Option(min=0, help="Messages shown (not with --json).")] = 20,
) -> None:
    """The room object's state (members, last messages, version), now or as of --seq/--at."""
    opts: Options = ctx.obj
    if seq is not None and at is not None:
        raise typer.BadParameter("give --seq or --at, not both")
    try:
        at_ns = parse_time_ns(at) if at is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--at") from exc

    async def work() -> history.RoomState:
        async with connected(opts.nats, opts.nats_from) as nc:
            return await history.room_state_as_of(nc, name, seq, at_ns)

    result = run(work)
    for skipped in result.skipped:
        err.print(f"[yellow]skipped commit {skipped['sequence']}:[/yellow] "
                  f"{escape(skipped['error'])}")
    as_of = f"sequence {seq}" if seq is not None else f"{at}" if at is not None else "now"
    if as_json:
        emit_json(result.as_dict())
    elif result.aggregate is not None:
        room = result.aggregate
        info = Table(show_header=False, title=f"room {escape(name)} as of {escape(as_of)}")
        info.add_column(style="bold")
        info.add_column()
        info.add_row("last commit", f"{result.sequence} at {display_time(result.time)}")
        info.add_row("version", str(room.version))
        info.add_row("private", "yes" if room.private else "no")
        info.add_row("expired", "yes" if room.expired else "no")
        info.add_row("members", escape(", ".join(room.members.values())) or "-")
        info.add_row("messages", f"{len(room.messages)} (a room keeps its last {HISTORY_LENGTH})")
        out.print(info)
        shown = room.messages[-last:] if last else []
        if shown:
            table = Table(title=f"last {len(shown)} messages")
            for column in ("time", "name", "message"):
                table.add_column(column)
            for m in shown:
                table.add_row(display_time_ms(m["timestamp"]), escape(m["name"]),
                              escape(m["message"]))
            out.print(table)
    if result.aggregate is None:
        err.print(f"room {escape(name)} has no events as of {escape(as_of)}")
        raise typer.Exit(1)


@app.command("events")
def events_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The room's name or id.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one per event.")] = False,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep printing new events until Ctrl-C.")] = False,
) -> None:
    """A room's events: stream sequence, time, version, event and its fields."""
    opts: Options = ctx.obj

    def show(rows: list[dict[str, Any]], header: bool) -> None:
        if as_json:
            for row in rows:
                emit_json(row)
            return
        table = Table() if header else Table(show_header=False, box=None)  # follow: rows only
        for column, justify in (("seq", "right"), ("time", "left"), ("ver", "right"),
                                ("event", "left"), ("fields", "left")):
            table.add_column(column, justify=justify, no_wrap=column != "fields")
        for row in rows:
            if "error" in row:
                table.add_row(str(row["sequence"]), display_time(row["time"]), "",
                              "[red]unreadable[/red]", escape(row["error"]))
                continue
            fields = {k: v for k, v in row["fields"].items()
                      if k not in ("timestamp", "originator_topic")}
            table.add_row(str(row["sequence"]), display_time(row["time"]),
                          str(row["version"]), row["event"],
                          escape(" ".join(f"{k}={json.dumps(v, ensure_ascii=False)}"
                                          for k, v in fields.items())))
        if rows or header:
            out.print(table)

    async def work() -> bool:
        """Whether the room has events (with --follow: had them, or got them)."""
        async with connected(opts.nats, opts.nats_from) as nc:
            first, any_events = True, False
            async with aclosing(history.room_commits(nc, name, follow)) as batches:
                async for commits in batches:
                    any_events = any_events or bool(commits)
                    if commits or not first:
                        show([row for msg in commits for row in history.event_rows(msg)],
                             header=first)
                    if first and not commits:
                        err.print(f"room {escape(name)} has no events"
                                  + (" yet; waiting for them (Ctrl-C ends)" if follow else ""))
                    first = False
            return any_events

    try:
        if not run(work):
            raise typer.Exit(EXIT_NOT_FOUND)
    except typer.Exit as exit_:
        if follow and exit_.exit_code == 130:  # Ctrl-C is how --follow ends
            raise typer.Exit(0) from None
        raise


@app.command("export")
def export_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The room's name or id.")],
    out_file: Annotated[Path | None, typer.Option(
        "--out", metavar="FILE", help="Write here instead of stdout.")] = None,
) -> None:
    """A room's commits as JSON lines: sequence, time and the events as stored."""
    opts: Options = ctx.obj

    async def work() -> int:
        async with connected(opts.nats, opts.nats_from) as nc:
            with progress_bar(f"exporting {name}") as (set_total, advance_to):
                lines = await transfer.export_room(nc, name)
                set_total(len(lines))
                # A CLI's one output file: nothing else runs on this loop meanwhile.
                target = open(out_file, "w", encoding="utf-8") if out_file else sys.stdout  # noqa: ASYNC230
                try:
                    for done, line in enumerate(lines, 1):
                        target.write(line + "\n")
                        advance_to(done)
                finally:
                    if out_file:
                        target.close()
                    else:
                        target.flush()
                return len(lines)

    count = run(work)
    err.print(f"exported {count} commits of room {escape(name)}"
              + (f" to {out_file}" if out_file else ""))


@app.command("import")
def import_command(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="An export (JSON lines); - for stdin.")],
    room: Annotated[str, typer.Option("--room", help="The new room; it must not exist.")],
) -> None:
    """Append an exported room's commits to a NEW room (its id and name rewritten)."""
    opts: Options = ctx.obj
    try:
        lines = sys.stdin.read().splitlines() if str(file) == "-" else \
            file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}", 1)

    async def work() -> transfer.Imported:
        async with connected(opts.nats, opts.nats_from) as nc:
            with progress_bar(f"importing into {room}") as (set_total, advance_to):
                set_total(sum(1 for line in lines if line.strip()))
                return await transfer.import_room(nc, lines, room, progress=advance_to)

    result = run(work)
    skipped = f"; {result.skipped} unreadable commits left out" if result.skipped else ""
    out.print(f"imported {result.commits} commits ({result.events} events) into room "
              f"{escape(room)}, up to sequence {result.last_sequence}{skipped}")


@app.command("upload")
def upload_command(
    ctx: typer.Context,
    upload_id: Annotated[str, typer.Argument(help="The upload id (64 hex).")],
    seq: Annotated[int | None, typer.Option("--seq", help="As of this stream sequence.")] = None,
    events: Annotated[bool, typer.Option("--events", help="Its events, not its state.")] = False,
    out_file: Annotated[Path | None, typer.Option(
        "--export", metavar="FILE", help="Write its commits here as JSON lines.")] = None,
) -> None:
    """An upload object: its state (JSON), its events (JSON lines), or its commits exported."""
    from services.replay import uploads

    opts: Options = ctx.obj

    async def work() -> list:
        async with connected(opts.nats) as nc:
            return await uploads.upload_messages(nc, upload_id)

    messages = run(work)
    if not messages:
        err.print(f"upload {escape(upload_id)} has no events")
        raise typer.Exit(1)
    if out_file is not None:
        out_file.write_text("".join(line + "\n" for line in uploads.export_lines(messages)))
        err.print(f"exported {len(messages)} commits of upload {escape(upload_id)} to {out_file}")
    elif events:
        for row in uploads.upload_events(messages):
            emit_json(row)
    else:
        emit_json(uploads.upload_state(messages, seq))


from services.replay import live  # noqa: E402 (its commands need the app above)

live.register(app)
