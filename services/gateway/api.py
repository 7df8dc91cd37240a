"""HTTP endpoints: private room creation and health."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import PlainTextResponse

from contracts.common import ErrorReply
from contracts.keys import new_private_room_id
from contracts.room import CreatePrivateRoom
from services.gateway.deps import Gateway

router = APIRouter()


@router.post(
    "/api/room",
    response_class=PlainTextResponse,
    tags=["rooms"],
    responses={200: {"content": {"text/plain": {"example": "4f0c" + "0" * 60}}}},
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
async def health(gateway: Gateway) -> PlainTextResponse:
    """200 while the gateway is connected to NATS."""
    if not gateway.nc.is_connected:
        raise HTTPException(status_code=503, detail="not connected to NATS")
    return PlainTextResponse("ok")
