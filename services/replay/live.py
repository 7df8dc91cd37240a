"""The live view: `durachat-replay partitions | objects KIND | inspect KIND KEY | top`.

It reads what the system says of itself and changes nothing:

- `partitions`: each kind's lease bucket, read by direct gets (owner, the key's revision,
  which is the lease token, and how long ago it was written);
- `objects KIND`: every replica's resident objects, asked on `durachat.admin.<kind>` (each
  host answers from memory, outside the objects' mailboxes; services/runtime/admin.py);
- `inspect KIND KEY`: the partition (the server's mapping, computed here the same way), its
  owner, what the owner holds in memory, the last commit and snapshot from the streams, the
  alarm's schedule, and the state (the live one when resident, else rebuilt from the stream);
- `top`: the services found by `$SRV.INFO`, their /metrics scraped, refreshed in place.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from datetime import UTC, datetime
from typing import Annotated, Any

import nats.errors
import nats.js.errors
import typer
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from contracts.keys import InvalidKey, subject_token
from contracts.subjects import event_stream, event_subject, snapshot_stream, snapshot_subject
from services.replay.roomstream import ReplayError, connected, jsonable
from services.runtime.admin import gather, state_json
from services.runtime.alarms import alarm_stream, schedule_subject
from services.runtime.eventstore import SNAPSHOT_SEQUENCE, ObjectEventStore, direct_get
from services.runtime.leases import MEMBERS, PARTITIONS, lease_bucket

KNOWN_KINDS = ("room", "context", "limiter", "quota", "upload")


def nats_partition(token: str, partitions: int) -> int:
    """The partition nats-server's `partition(P, n)` mapping gives a subject token: FNV-1a
    (32 bit) of the token's bytes, modulo P (nats-server `server/subject_transform.go`)."""
    h = 0x811C9DC5
    for byte in token.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


def age(stamp: str) -> float | None:
    """Seconds since an RFC 3339 time as NATS writes it (ns precision), or None."""
    if not stamp:
        return None
    try:
        head, _, rest = stamp.rstrip("Z").partition(".")
        when = datetime.fromisoformat(head + ("." + rest[:6] if rest else "")).replace(tzinfo=UTC)
    except ValueError:
        return None
    return max(0.0, time.time() - when.timestamp())


async def services_info(nc: NATS, window: float = 0.5) -> list[dict[str, Any]]:
    """The `$SRV.INFO` answers of every durachat service up now."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    infos: list[dict[str, Any]] = []
    try:
        await nc.publish("$SRV.INFO", b"", reply=inbox)
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            info = json.loads(msg.data)
            if str(info.get("name", "")).startswith("durachat-"):
                infos.append(info)
    finally:
        await sub.unsubscribe()
    return sorted(infos, key=lambda i: (i["name"], i.get("metadata", {}).get("replica", "")))


async def hosted_kinds(nc: NATS) -> dict[str, int]:
    """{kind: replicas hosting it}, from the services' `$SRV.INFO` metadata."""
    kinds: dict[str, int] = {}
    for info in await services_info(nc):
        for kind in filter(None, (info.get("metadata") or {}).get("kinds", "").split(",")):
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


async def require_kind(nc: NATS, kind: str) -> int:
    kinds = await hosted_kinds(nc)
    if kind not in kinds:
        raise ReplayError(f"no running service hosts kind {kind!r} (hosted now: "
                          f"{', '.join(sorted(kinds)) or 'none'})")
    return kinds[kind]


async def partition_rows(nc: NATS, kinds: list[str]) -> list[dict[str, Any]]:
    rows = []
    for kind in kinds:
        bucket = lease_bucket(kind)
        prefix = f"$KV.{bucket}."
        latest: dict[str, Any] = {}
        try:
            async for message in direct_get(nc, f"KV_{bucket}", subject=prefix + ">"):
                latest[message.subject[len(prefix):]] = message
        except Exception:  # no bucket: the kind was never hosted against this server
            continue
        members = {k[len(MEMBERS):] for k, m in latest.items() if k.startswith(MEMBERS) and m.data}
        for key, message in sorted(latest.items()):
            if not key.startswith(PARTITIONS):
                continue
            owner = message.data.decode() if message.data else None
            rows.append({
                "kind": kind,
                "partition": int(key[len(PARTITIONS):]),
                "owner": owner,
                "live": owner in members,
                "revision": message.sequence,
                "age_seconds": age(message.time),
            })
    return sorted(rows, key=lambda r: (r["kind"], r["partition"]))


async def inspect_object(nc: NATS, kind: str, key: str, partitions: int) -> dict[str, Any]:
    try:
        token = subject_token(key)
    except InvalidKey as exc:
        raise ReplayError(str(exc)) from None
    replicas = await require_kind(nc, kind)
    view: dict[str, Any] = {"kind": kind, "key": key,
                            "partition": nats_partition(token, partitions)}
    owners = {r["partition"]: r for r in await partition_rows(nc, [kind])}
    lease = owners.get(view["partition"])
    view["owner"] = lease["owner"] if lease and lease["live"] else None
    view["lease_revision"] = lease["revision"] if lease else None
    answers = await gather(nc, kind, {"op": "inspect", "key": key}, expect=replicas)
    resident = [a for a in answers if a.get("resident")]
    view["resident"] = bool(resident)
    view["replicas_answering"] = [a["replica"] for a in answers]
    if resident:
        live = resident[0]
        view["resident_on"] = live["replica"]
        for field in ("mailbox", "version", "events_since_snapshot", "alarm", "idle_seconds",
                      "last_commit_at", "state"):
            view[field] = live.get(field)
    js = nc.jetstream()
    try:
        last = await js.get_last_msg(event_stream(kind), event_subject(kind, key), direct=True)
        view["last_commit"] = {"sequence": last.seq,
                               "stored": (last.headers or {}).get("Nats-Time-Stamp")}
    except (nats.js.errors.NotFoundError, nats.js.errors.ServiceUnavailableError):
        view["last_commit"] = None  # a memory-only kind, or no commit yet
    except nats.js.errors.Error:
        view["last_commit"] = None
    try:
        snap = await js.get_last_msg(snapshot_stream(kind), snapshot_subject(kind, key), direct=True)
        view["snapshot_covers"] = int((snap.headers or {}).get(SNAPSHOT_SEQUENCE, 0))
    except nats.js.errors.Error:
        view["snapshot_covers"] = None
    try:
        alarm = await js.get_last_msg(alarm_stream(kind), schedule_subject(kind, key), direct=True)
        view["alarm_scheduled"] = json.loads(alarm.data).get("at")
    except (nats.js.errors.Error, ValueError):
        view["alarm_scheduled"] = None
    if not resident and view["last_commit"] is not None:
        store = ObjectEventStore(nc, kind)
        loaded = await store.load(key)
        view["version"] = loaded.sequence
        view["state"] = state_json(_StoreHost(store), loaded.aggregate)
    return view


class _StoreHost:
    """What `state_json` reads of a host: its kind is durable, and its store."""

    class kind:
        durable = True

    def __init__(self, store: ObjectEventStore) -> None:
        self.store = store


def inspect_view(kind: str, key: str, view: dict[str, Any]) -> Group:
    """`inspect`'s table of fields, then the state as indented JSON."""
    table = Table("field", "value", title=f"{escape(kind)} {escape(key)}")
    for name, value in view.items():
        if name != "state":
            table.add_row(name, escape(json.dumps(jsonable(value), ensure_ascii=False)))
    state = escape(json.dumps(view.get("state"), ensure_ascii=False, indent=2))
    return Group(table, Text.from_markup(f"state: {state}"))


# --- top -------------------------------------------------------------------------------------


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for ls, v in samples.get(name, []) if all(ls.get(k) == x for k, x in labels.items()))


def quantile(samples: dict, name: str, q: float) -> float | None:
    """An upper bound of the q-quantile of histogram `name` (all label sets together)."""
    buckets: dict[float, float] = {}
    for labels, v in samples.get(name + "_bucket", []):
        le = float(labels["le"])
        buckets[le] = buckets.get(le, 0.0) + v
    if not buckets or not buckets.get(float("inf")):
        return None
    count = buckets[float("inf")]
    for le in sorted(buckets):
        if buckets[le] >= q * count:
            return le
    return None


async def top_tables(nc: NATS, previous: dict[str, tuple[float, float, float]]) -> Group:
    infos = await services_info(nc)
    procs = Table(title="durachat processes", expand=False)
    for column in ("service", "replica", "objects", "cmd/s", "cmd p99 ≤ s", "partitions",
                   "sockets", "frames/s", "proj. lag", "AI now", "metrics"):
        procs.add_column(column)
    now = time.monotonic()
    for info in infos:
        meta = info.get("metadata") or {}
        url = meta.get("metrics")
        name = info["name"].removeprefix("durachat-")
        replica = meta.get("replica") or meta.get("gateway") or info.get("id", "")
        if not url:
            procs.add_row(name, replica, *["-"] * 8, "(not served)")
            continue
        try:
            s = await asyncio.to_thread(scrape, url)
        except OSError as exc:
            procs.add_row(name, replica, *["-"] * 8, f"unreachable: {exc}")
            continue
        commands = total(s, "durachat_command_seconds_count")
        frames = total(s, "durachat_ws_frames_total")
        key = f"{name}/{replica}"
        rate_cmd = rate_frames = ""
        if key in previous:
            then, c0, f0 = previous[key]
            dt = max(1e-6, now - then)
            rate_cmd, rate_frames = f"{(commands - c0) / dt:.1f}", f"{(frames - f0) / dt:.1f}"
        previous[key] = (now, commands, frames)
        p99 = quantile(s, "durachat_command_seconds", 0.99)
        procs.add_row(
            name, replica[:24],
            f"{total(s, 'durachat_objects_resident'):.0f}",
            rate_cmd or f"{commands:.0f} total",
            "-" if p99 is None else f"{p99:g}",
            f"{total(s, 'durachat_partitions_owned'):.0f}",
            f"{total(s, 'durachat_ws_connections'):.0f}" if name == "gateway" else "",
            rate_frames or (f"{frames:.0f} total" if frames else ""),
            f"{total(s, 'durachat_projector_lag_messages'):.0f}" if name == "projector" else "",
            f"{total(s, 'durachat_ai_replies_in_flight'):.0f}" if name == "context" else "",
            url,
        )
    busiest = Table(title="busiest resident objects (mailbox depth, then least idle)")
    for column in ("kind", "key", "replica", "partition", "mailbox", "version", "idle s"):
        busiest.add_column(column)
    rows = []
    for kind, replicas in (await hosted_kinds(nc)).items():
        for answer in await gather(nc, kind, {"op": "objects"}, window=0.3, expect=replicas):
            rows += [{**o, "kind": kind, "replica": answer["replica"]} for o in answer.get("objects", [])]
    rows.sort(key=lambda o: (-o["mailbox"], o["idle_seconds"]))
    for o in rows[:15]:
        busiest.add_row(o["kind"], escape(o["key"][:40]), o["replica"][:24], str(o["partition"]),
                        str(o["mailbox"]), str(o["version"]), f"{o['idle_seconds']:.1f}")
    return Group(procs, busiest)


# --- the commands ----------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add the live view's commands to the `durachat-replay` app."""
    from services.replay.main import Options, emit_json, fail, out, run

    @app.command("partitions")
    def partitions_command(
        ctx: typer.Context,
        kind: Annotated[str | None, typer.Argument(help="One kind; all when omitted.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one per partition.")] = False,
    ) -> None:
        """Who owns each partition of each kind: owner, lease revision (the token), age."""
        opts: Options = ctx.obj

        async def work() -> list[dict[str, Any]]:
            async with connected(opts.nats, opts.nats_from) as nc:
                kinds = [kind] if kind else sorted(set(KNOWN_KINDS) | set(await hosted_kinds(nc)))
                return await partition_rows(nc, kinds)

        rows = run(work)
        if kind and not rows:
            fail(f"no lease bucket for kind {kind!r}: no service ever hosted it here", 1)
        if as_json:
            for row in rows:
                emit_json(row)
            return
        table = Table("kind", "partition", "owner", "revision", "age s")
        for row in rows:
            owner = row["owner"] if row["live"] else f"[red]{row['owner'] or '-'} (not live)[/red]"
            table.add_row(row["kind"], str(row["partition"]), owner, str(row["revision"]),
                          "-" if row["age_seconds"] is None else f"{row['age_seconds']:.0f}")
        out.print(table)

    @app.command("objects")
    def objects_command(
        ctx: typer.Context,
        kind: Annotated[str, typer.Argument(help="room, context, limiter or quota.")],
        as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one per object.")] = False,
    ) -> None:
        """The objects of KIND resident now on each replica: mailbox depth, version, idle time."""
        opts: Options = ctx.obj

        async def work() -> list[dict[str, Any]]:
            async with connected(opts.nats, opts.nats_from) as nc:
                replicas = await require_kind(nc, kind)
                answers = await gather(nc, kind, {"op": "objects"}, expect=replicas)
                return [{**o, "replica": a["replica"]} for a in answers for o in a.get("objects", [])]

        rows = run(work)
        if as_json:
            for row in rows:
                emit_json(row)
            return
        table = Table("key", "replica", "partition", "mailbox", "version", "idle s", "alarm",
                      title=f"{len(rows)} resident {kind} object(s)")
        for row in sorted(rows, key=lambda r: r["key"]):
            table.add_row(escape(row["key"]), row["replica"], str(row["partition"]),
                          str(row["mailbox"]), str(row["version"]), f"{row['idle_seconds']:.1f}",
                          "-" if row["alarm"] is None else str(row["alarm"]))
        out.print(table)

    @app.command("inspect")
    def inspect_command(
        ctx: typer.Context,
        kind: Annotated[str, typer.Argument(help="room, context, limiter or quota.")],
        key: Annotated[str, typer.Argument(help="The object's key (a room's name, a user id).")],
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object (per refresh).")] = False,
        partitions: Annotated[int, typer.Option(
            min=0, help="P of the partition mapping (0: DURACHAT_PARTITIONS).")] = 0,
        watch: Annotated[bool, typer.Option(
            "--watch", help="Refresh until Ctrl-C, like top (with --json: a line per refresh).")] = False,
        interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes (--watch).")] = 2.0,
        count: Annotated[int, typer.Option(
            min=0, help="With --watch: stop after this many views (0: until Ctrl-C).")] = 0,
    ) -> None:
        """One object: partition, owner, resident or not, last commit, snapshot, alarm, state."""
        from services.replay.main import ReplaySettings
        opts: Options = ctx.obj
        p = partitions or ReplaySettings().partitions

        if not watch:
            async def once() -> dict[str, Any]:
                async with connected(opts.nats, opts.nats_from) as nc:
                    return await inspect_object(nc, kind, key, p)

            view = run(once)
            if as_json:
                emit_json(view)
            else:
                out.print(inspect_view(kind, key, view))
            return

        async def watching() -> None:
            async with connected(opts.nats, opts.nats_from) as nc:
                shown = 0
                live: Live | None = None
                try:
                    while True:
                        view = await inspect_object(nc, kind, key, p)
                        shown += 1
                        if as_json:
                            emit_json(view)
                        elif out.is_terminal:
                            if live is None:
                                live = Live(inspect_view(kind, key, view), console=out, auto_refresh=False)
                                live.start()
                            else:
                                live.update(inspect_view(kind, key, view), refresh=True)
                        else:  # a pipe or a file: one view after another, each stamped
                            out.print(f"--- {datetime.now(UTC).isoformat(timespec='seconds')}")
                            out.print(inspect_view(kind, key, view))
                        if count and shown >= count:
                            return
                        await asyncio.sleep(interval)
                finally:
                    if live is not None:
                        live.stop()

        run(watching)

    @app.command("top")
    def top_command(
        ctx: typer.Context,
        interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 2.0,
        once: Annotated[bool, typer.Option("--once", help="Print once and exit.")] = False,
    ) -> None:
        """Refreshing: every process's key metrics and the busiest objects (Ctrl-C stops)."""
        opts: Options = ctx.obj

        async def work() -> None:
            previous: dict[str, tuple[float, float, float]] = {}
            async with connected(opts.nats, opts.nats_from) as nc:
                if once:
                    wide = out if out.is_terminal else Console(width=200, highlight=False)
                    wide.print(await top_tables(nc, previous))
                    return
                with Live(await top_tables(nc, previous), console=out, auto_refresh=False) as live:
                    while True:
                        await asyncio.sleep(interval)
                        live.update(await top_tables(nc, previous), refresh=True)

        run(work)
