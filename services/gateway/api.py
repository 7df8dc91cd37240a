"""HTTP endpoints: private room creation, liveness and readiness."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import nats.errors
from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from contracts.common import ErrorReply
from contracts.keys import new_private_room_id
from contracts.room import CreatePrivateRoom
from services.gateway.deps import Gateway, GatewayState
from services.gateway.errors import CODES, described
from services.readstore.store import ReadStoreError, open_read_store
from services.runtime.eventstore import DirectGetError
from services.runtime.leases import lease_coverage

router = APIRouter()

READY_TIMEOUT = 2.0  # seconds one readiness check may take


@router.post(
    "/api/room",
    response_class=PlainTextResponse,
    tags=["rooms"],
    responses={200: {"content": {"text/plain": {"example": "4f0c" + "0" * 60}}}, **described(503)},
)
async def create_private_room(gateway: Gateway) -> PlainTextResponse:
    """Create a private room; returns its 64-hex id as plain text (reachable only by it)."""
    room = new_private_room_id()
    reply = await gateway.rooms.send(room, CreatePrivateRoom())
    if isinstance(reply, ErrorReply):
        raise HTTPException(status_code=503, detail=reply.message)
    return PlainTextResponse(room)


@router.api_route(
    "/api/room", methods=["GET", "PUT", "DELETE", "PATCH"], include_in_schema=False
)
async def room_wrong_method() -> PlainTextResponse:
    return PlainTextResponse("Method not allowed", status_code=405)  # as the demo answers


@router.get("/healthz", response_class=PlainTextResponse, tags=["ops"])
async def health() -> PlainTextResponse:
    """Liveness: 200 `ok` while the gateway process answers. Readiness is `/readyz`."""
    return PlainTextResponse("ok")


class Check(BaseModel):
    ok: bool
    detail: str = Field(examples=["16 of 16 partitions owned"])


class Readiness(BaseModel):
    status: str = Field("ready", examples=["ready"])
    checks: dict[str, Check] = Field(
        description="`nats`, `read_store`, and `leases.<kind>` for every object kind"
    )


class NotReady(BaseModel):
    error: dict[str, str] = Field(examples=[{"code": "unavailable", "message": "not ready: leases.room"}])
    checks: dict[str, Check]


@router.get(
    "/readyz",
    response_model=Readiness,
    tags=["ops"],
    responses={503: {"model": NotReady, "description": "what is not ready"}},
)
async def readiness(gateway: Gateway) -> Any:
    """Ready (200) only while NATS is connected, every partition of every object kind has a
    live owner (read from the lease buckets), and the read store is readable; otherwise 503
    in the error shape, with every check saying what it found."""
    checks = await readiness_checks(gateway)
    failed = [name for name, check in checks.items() if not check.ok]
    if not failed:
        return Readiness(checks=checks)
    body = {
        "error": {"code": CODES[503], "message": f"not ready: {', '.join(failed)}"},
        "checks": {name: check.model_dump() for name, check in checks.items()},
    }
    return JSONResponse(body, status_code=503)


async def readiness_checks(gateway: GatewayState) -> dict[str, Check]:
    checks = {"nats": Check(ok=gateway.nc.is_connected, detail=_nats_detail(gateway))}
    if gateway.nc.is_connected:
        kinds = gateway.settings.ready_kinds
        found = await asyncio.gather(*(_leases_check(gateway, kind) for kind in kinds))
        checks.update({f"leases.{kind}": check for kind, check in zip(kinds, found)})
    else:
        checks.update(
            {f"leases.{kind}": Check(ok=False, detail="unknown: not connected to NATS")
             for kind in gateway.settings.ready_kinds}
        )
    checks["read_store"] = await asyncio.to_thread(_read_store_check, gateway)
    return checks


def _nats_detail(gateway: GatewayState) -> str:
    if gateway.nc.is_connected:
        return f"connected to {gateway.nc.connected_url.netloc if gateway.nc.connected_url else '?'}"
    return "not connected to NATS"


async def _leases_check(gateway: GatewayState, kind: str) -> Check:
    partitions = gateway.settings.partitions
    try:
        coverage = await asyncio.wait_for(lease_coverage(gateway.nc, kind), READY_TIMEOUT)
    except (DirectGetError, nats.errors.Error, TimeoutError) as exc:
        return Check(ok=False, detail=f"lease bucket unreadable: {exc!r}")
    unowned = coverage.unowned(partitions)
    if unowned:
        return Check(
            ok=False,
            detail=f"{partitions - len(unowned)} of {partitions} partitions owned; "
            f"no live owner for {', '.join(map(str, unowned))}",
        )
    return Check(
        ok=True,
        detail=f"{partitions} of {partitions} partitions owned by {len(set(coverage.owners.values()))} replica(s)",
    )


def _read_store_check(gateway: GatewayState) -> Check:
    try:
        conn = open_read_store(gateway.settings.read_db, readonly=True)
    except ReadStoreError as exc:
        return Check(ok=False, detail=f"not readable: {exc}")
    try:
        conn.execute("SELECT count(*) FROM rooms").fetchone()
    except sqlite3.Error as exc:
        return Check(ok=False, detail=f"not readable: {exc}")
    finally:
        conn.close()
    return Check(ok=True, detail=f"readable at {gateway.settings.read_db}")
