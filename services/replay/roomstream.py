"""What every replay job needs: a NATS connection, the room stream's commits, and the
times they were stored at.

The room stream (`EVT_ROOM`) is read with batched direct gets (`ObjectEventStore`,
`direct_get`), so no consumer is left behind on the server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Callable
from contextlib import asynccontextmanager, suppress
from decimal import Decimal
from typing import Any
from uuid import UUID

import nats
import nats.js.errors
from nats.aio.client import Client as NATS

from contracts.subjects import ROOM
from services.readstore.projection import ROOM_STREAM
from services.runtime.eventstore import ObjectEventStore, StoredMessage

Progress = Callable[[int], None]  # called with how far a job has got (a sequence, a count)


class ReplayError(Exception):
    """A refusal or failure the user should read as one line (exit code 1)."""

    exit_code = 1


class Unavailable(ReplayError):
    """NATS cannot be reached (exit code 3, as for an unusable read store)."""

    exit_code = 3


# --- NATS ------------------------------------------------------------------------------------


def reason(exc: BaseException) -> str:
    """Why a connection failed, never empty: nats-py and asyncio raise some errors with no
    text (a timeout, "no servers available"); their cause often says more."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 3:
        text = str(seen).strip()
        if text and text not in parts:
            parts.append(text)
        elif not text and not parts:
            parts.append({"TimeoutError": "timed out"}.get(type(seen).__name__,
                                                          type(seen).__name__))
        seen = seen.__cause__ or seen.__context__
    return ": ".join(parts)


@asynccontextmanager
async def connected(url: str, where: str = ""):
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
        raise Unavailable(f"cannot reach NATS at {url}{where}: {reason(exc)}") from exc
    try:
        yield nc
    finally:
        with suppress(Exception):
            await nc.close()


async def last_sequence(nc: NATS, stream: str = ROOM_STREAM) -> int:
    """The (room) stream's last sequence now (0 when the stream does not exist yet)."""
    try:
        return (await nc.jetstream().stream_info(stream)).state.last_seq
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


def jsonable(value: Any) -> Any:
    """`value` with the types domain events hold (datetime, UUID, Decimal) as strings."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (UUID, Decimal)):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
