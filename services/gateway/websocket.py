"""One chat WebSocket: the demo protocol in front of a room object."""

from __future__ import annotations

import asyncio
import logging
import secrets

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import PlainTextResponse
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from contracts.common import ErrorReply, describe_validation_error
from contracts.keys import is_private_room_id
from contracts.ratelimit import RATE_LIMITED
from contracts.room import MAX_NAME_LENGTH, GetRoom, JoinRoom, LeaveRoom, PostMessage, RoomState
from services.gateway import protocol
from services.gateway.deps import Gateway
from services.gateway.identity import (
    SESSION_COOKIE,
    Identity,
    InvalidToken,
    KeysUnavailable,
    bearer,
)
from services.gateway.protocol import FrameError
from services.gateway.ratelimit import client_address
from services.gateway.rooms import RoomFanout
from services.gateway.sockets import OutFrame, SocketWriter, open_writer
from services.runtime import metrics, tracing

log = logging.getLogger(__name__)
router = APIRouter(tags=["rooms"])

CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
READY = OutFrame(protocol.READY)


def room_name_problem(name: str) -> str | None:
    """Why `name` cannot be a room, in the demo's words, or None when it can."""
    if is_private_room_id(name) or len(name) <= MAX_NAME_LENGTH:
        return None
    return "Name too long"


@router.get("/api/room/{name}/websocket", response_class=PlainTextResponse)
async def websocket_over_http(name: str, request: Request) -> PlainTextResponse:
    """Only WebSocket upgrades are served here."""
    if problem := room_name_problem(name):
        return PlainTextResponse(problem, status_code=404)
    return PlainTextResponse("expected websocket", status_code=400)


class ChatSession:
    """A socket in a room: frames held until the name frame, then sent in order."""

    def __init__(
        self,
        ws: WebSocket,
        room: str,
        writer: SocketWriter,
        address: str,
        identity: Identity,
        writer_limit: int = 1000,
    ) -> None:
        self.ws = ws
        self.room = room
        self.address = address
        self.identity = identity
        self.user_id = identity.user_id  # who posts: their AI context answers them
        self.max_blocked = writer_limit  # broadcasts held for a socket that has not named itself
        self.writer = writer
        self.id = secrets.token_urlsafe(12)
        self.name: str | None = None
        self.min_version = 0  # broadcasts at or below this are already in the history sent
        # Frames held until the client has sent its name, with the room version they show.
        self.blocked: list[tuple[int, OutFrame]] = []
        self.frames = tracing.FrameSpans(room)  # a `receive ws.frame` span per frame

    def deliver(self, version: int, frame: OutFrame) -> None:
        """Take one broadcast of the room (called by the room's fan-out)."""
        if version <= self.min_version:
            return
        if self.name is None:
            if len(self.blocked) >= self.max_blocked:
                # A socket that never names itself must not hold the room's traffic forever.
                self.writer.close(CLOSE_POLICY, "Send your name first.")
                return
            self.blocked.append((version, frame))
        else:
            self.writer.send(frame)

    def send(self, text: str) -> None:
        self.writer.send(OutFrame(text))


class Refused(Exception):
    """A socket refused before the upgrade: the HTTP status and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


async def socket_identity(ws: WebSocket, gateway: Gateway) -> Identity:
    """Who the socket is, never derived from the name it will give: `?token=` (browsers
    cannot set headers on a WebSocket), else `Authorization: Bearer`, else the session
    cookie, else a guest for this socket only (the demo's client shows no credential).
    A token shown and refused refuses the socket; a stale cookie only makes it a guest."""
    identities = gateway.identities
    shown = ws.query_params.get("token")
    if shown is None and "authorization" in ws.headers:
        shown = bearer(ws.headers["authorization"]) or ""
    try:
        if shown is not None:
            try:
                return await identities.verify_async(shown)
            except InvalidToken as exc:
                raise Refused(401, f"Invalid token: {exc}.") from None
        if cookie := ws.cookies.get(SESSION_COOKIE):
            try:
                return await identities.verify_async(cookie)
            except InvalidToken:
                pass  # expired, or another secret's: the page gets a new one on its next load
    except KeysUnavailable as exc:
        raise Refused(503, f"{exc}.") from None
    return identities.socket_guest()


@router.websocket("/api/room/{name}/websocket")
async def chat_socket(ws: WebSocket, name: str, gateway: Gateway) -> None:
    if problem := room_name_problem(name):
        await ws.send_denial_response(PlainTextResponse(problem, status_code=404))
        return
    settings = gateway.settings
    address = client_address(
        ws.client.host if ws.client else None,
        ws.headers.get("x-forwarded-for"),
        frozenset(settings.trusted_proxies),
    )
    try:
        identity = await socket_identity(ws, gateway)
    except Refused as refused:
        await ws.send_denial_response(PlainTextResponse(str(refused), status_code=refused.status))
        return
    if gateway.sockets_per_ip[address] >= settings.max_sockets_per_ip:
        await ws.send_denial_response(
            PlainTextResponse("Too many connections from your IP.", status_code=429)
        )
        return
    gateway.sockets_per_ip[address] += 1
    metrics.WS_CONNECTIONS.inc()
    try:
        await ws.accept()
        await chat(ws, name, address, identity, gateway)
    finally:
        metrics.WS_CONNECTIONS.dec()
        gateway.sockets_per_ip[address] -= 1
        if gateway.sockets_per_ip[address] <= 0:
            del gateway.sockets_per_ip[address]


async def chat(
    ws: WebSocket, name: str, address: str, identity: Identity, gateway: Gateway
) -> None:
    settings = gateway.settings
    writer = open_writer(ws, settings.send_buffer_limit, settings.send_queue_limit)
    session = ChatSession(ws, name, writer, address, identity, settings.send_queue_limit)
    fanout = await gateway.fanouts.attach(name, id(session), session.deliver)
    try:
        state = await gateway.rooms.send(name, GetRoom())
        if isinstance(state, ErrorReply):
            session.send(protocol.error_frame(state.message))
            writer.close(CLOSE_TRY_AGAIN if state.retryable else CLOSE_POLICY, state.message[:120])
        else:
            assert isinstance(state, RoomState)
            session.min_version = state.version
            # Broadcasts that arrived before the state and are already in it (a room that
            # loads says its last commit again) are dropped; the state comes first.
            session.blocked = (
                [(0, OutFrame(protocol.encode({"joined": m}))) for m in state.members]
                + [(0, OutFrame(protocol.message_frame(m))) for m in state.messages]
                + [
                    (0, OutFrame(text))
                    for reply in state.ai
                    for text in protocol.ai_progress_frames(reply)
                ]
                + [(v, f) for v, f in session.blocked if v > state.version]
            )
            await converse(session, gateway, fanout)
    except WebSocketDisconnect:
        pass
    finally:
        session.frames.end()
        await gateway.fanouts.detach(name, id(session))
        if session.name is not None:
            await gateway.rooms.send(name, LeaveRoom(session_id=session.id))
        if writer.closing:
            # Let the writer flush the error frame and close with its code.
            await writer.finished(timeout=settings.request_timeout)
        writer.stop()


async def converse(session: ChatSession, gateway: Gateway, fanout: RoomFanout) -> None:
    """Read the client's frames until it goes away or is closed."""
    ws = session.ws
    settings = gateway.settings
    limit = settings.max_frame_bytes
    rooms = gateway.rooms
    while not session.writer.closing:
        session.frames.end()  # the frame before is handled
        incoming = await ws.receive()
        session.frames.start(incoming)
        if incoming["type"] == "websocket.disconnect":
            return
        text, data = incoming.get("text"), incoming.get("bytes")
        # Every frame takes a token from the client's IP, as in the demo, before anything else.
        if settings.rate_limit:
            decision = await gateway.limiter.take(session.address)
            if not decision.allowed:
                metrics.WS_FRAMES.labels("ratelimited").inc()
                session.send(protocol.error_frame(RATE_LIMITED))
                # Read nothing more from this socket for a while: a client that floods is
                # held back by TCP itself instead of costing the gateway a refusal per frame
                # (the frames it sends meanwhile are read, and judged, afterwards).
                await asyncio.sleep(min(decision.cooldown, settings.refusal_pause))
                continue
        try:
            if session.name is None:
                frame = protocol.parse_name_frame(text, data, limit)
                reply = await rooms.send(
                    session.room,
                    JoinRoom(session_id=session.id, name=frame.name, gateway=gateway.fanouts.gateway_id),
                )
                if isinstance(reply, ErrorReply):
                    raise FrameError(reply.message)
                session.name = frame.name
                for _, queued in session.blocked:
                    session.writer.send(queued)
                session.blocked.clear()
                # The client sees its own {"joined"} before {"ready"}, as in the demo.
                await fanout.delivered(reply.version, timeout=gateway.settings.request_timeout)
                # {"ready": true}, plus the user id of a credential the client showed (an
                # extension old clients ignore); a socket-only guest gets the demo's frame.
                session.writer.send(
                    READY if session.identity.token is None
                    else OutFrame(protocol.encode({"ready": True, "user": session.user_id}))
                )
            else:
                frame = protocol.parse_message_frame(text, data, limit)
                reply = await rooms.send(
                    session.room,
                    PostMessage(
                        session_id=session.id,
                        text=frame.text,
                        user_id=session.user_id,
                    ),
                )
                if isinstance(reply, ErrorReply):
                    raise FrameError(reply.message)
            metrics.WS_FRAMES.labels("ok").inc()
        except FrameError as exc:
            metrics.WS_FRAMES.labels("refused").inc()
            session.send(protocol.error_frame(str(exc)))
            if exc.close_code is not None:
                session.writer.close(exc.close_code, str(exc))
        except ValidationError as exc:
            metrics.WS_FRAMES.labels("refused").inc()
            # A frame the protocol checks let through but the command contract refuses:
            # still a clear error for the client, never a dropped socket.
            session.send(protocol.error_frame(f"Invalid frame: {describe_validation_error(exc)}."))
