"""One chat WebSocket: the demo protocol in front of a room object."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from dataclasses import dataclass

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import PlainTextResponse
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from contracts.common import ErrorReply, describe_validation_error
from contracts.keys import is_private_room_id
from contracts.ratelimit import RATE_LIMITED
from contracts.room import (
    MAX_NAME_LENGTH,
    MAX_POST_BATCH,
    GetRoom,
    JoinRoom,
    LeaveRoom,
    MessagesPosted,
    PostMessages,
    RoomState,
)
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
from services.gateway.ratelimit import SocketLimit, client_address
from services.gateway.rooms import RoomFanout
from services.gateway.sockets import OutFrame, SocketWriter, open_writer
from services.gateway.uploads import attachable
from services.runtime import metrics, tracing

log = logging.getLogger(__name__)
router = APIRouter(tags=["rooms"])

CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
CLOSE_INTERNAL = 1011
READY = OutFrame(protocol.READY)
OVERLOADED = (
    "Too many frames waiting for an answer (at most {bound} per socket): this one was not "
    "posted; slow down."
)
TOO_MANY_REFUSED = "Too many frames refused while earlier ones wait; reconnect more slowly."


@dataclass(frozen=True, slots=True)
class Frame:
    """A client frame read and let through by the limiter, not parsed yet."""

    text: str | None
    data: bytes | None


@dataclass(slots=True)
class Refusal:
    """`count` frames refused as they arrived, answered at their position in the inbox."""

    message: str
    retry_after: float | None
    count: int = 1


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
    """A socket in a room: broadcasts held until the name frame, then sent in order; the
    client's frames read at once into `inbox` and answered in order."""

    def __init__(
        self,
        ws: WebSocket,
        room: str,
        writer: SocketWriter,
        address: str,
        identity: Identity,
        writer_limit: int = 1000,
        *,
        limit: SocketLimit | None = None,
        max_unanswered: int = 256,
        request_timeout: float = 10.0,
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
        self.limit = limit  # the demo's per-socket limiter gate; None when limits are off
        self.max_unanswered = max_unanswered
        self.request_timeout = request_timeout
        # Frames read and not answered yet, in order: Frame, a text parsed already (str), or
        # a Refusal. `unanswered` counts frames here or in flight (not refusals).
        self.inbox: deque[Frame | protocol.MessageFrame | Refusal] = deque()
        self.unanswered = 0
        self.refusals_queued = 0
        self.wake = asyncio.Event()
        self.done_reading = False
        self.posted_version = 0  # the broadcast (room version) that shows this socket's last post

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

    # --- the client's frames -----------------------------------------------------------------

    def take(self, text: str | None, data: bytes | None) -> None:
        """A frame just read: judged by the limiter gate now, queued to be answered in order,
        or refused at once when too many wait already."""
        if self.limit is not None:
            wait = self.limit.admit()
            if wait is not None:
                metrics.WS_FRAMES.labels("ratelimited").inc()  # and RATELIMIT_REFUSALS by source
                self._refuse(RATE_LIMITED, wait)
                return
        if self.unanswered >= self.max_unanswered:
            metrics.WS_FRAMES.labels("overloaded").inc()
            self._refuse(OVERLOADED.format(bound=self.max_unanswered), None)
            return
        metrics.WS_FRAMES.labels("ok").inc()
        self.unanswered += 1
        self.inbox.append(Frame(text, data))
        self.wake.set()

    def _refuse(self, message: str, retry_after: float | None) -> None:
        if not self.unanswered and not self.inbox:  # nothing before it: answer at once
            self.send(protocol.error_frame(message, retry_after))
            return
        last = self.inbox[-1] if self.inbox else None
        if isinstance(last, Refusal) and (last.message, last.retry_after) == (message, retry_after):
            last.count += 1
            return
        if self.refusals_queued >= self.max_unanswered:
            self.writer.close(CLOSE_POLICY, TOO_MANY_REFUSED)
            return
        self.refusals_queued += 1
        self.inbox.append(Refusal(message, retry_after))
        self.wake.set()

    async def refuse(self, refusal: Refusal, fanout: RoomFanout) -> None:
        """Answer refused frames, after what the frames before them posted was shown."""
        self.refusals_queued -= 1
        await self.after_posted(fanout)
        frame = OutFrame(protocol.error_frame(refusal.message, refusal.retry_after))
        for _ in range(refusal.count):
            self.writer.send(frame)

    def answered(self, frames: int) -> None:
        self.unanswered -= frames

    async def after_posted(self, fanout: RoomFanout) -> None:
        """Wait until this socket was handed its own last accepted post: an error frame for
        a later frame comes after it, as in the demo, where each frame is done in turn."""
        if fanout.version < self.posted_version:
            await fanout.delivered(self.posted_version, timeout=self.request_timeout)


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
    session = ChatSession(
        ws, name, writer, address, identity, settings.send_queue_limit,
        limit=SocketLimit(gateway.limiter, address) if settings.rate_limit else None,
        max_unanswered=settings.max_unanswered_frames,
        request_timeout=settings.request_timeout,
    )
    fanout = await gateway.fanouts.attach(name, id(session), session.deliver)

    def upload_progress(text: str) -> None:  # for sockets that joined (named themselves)
        if session.name is not None:
            session.send(text)

    try:
        await gateway.upload_progress.attach(name, id(session), upload_progress)
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
                + [(0, OutFrame(text)) for text in protocol.history_frames(state.messages)]
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
        await gateway.upload_progress.detach(name, id(session))
        await gateway.fanouts.detach(name, id(session))
        if session.name is not None:
            await gateway.rooms.send(name, LeaveRoom(session_id=session.id))
        if writer.closing:
            # Let the writer flush the error frame and close with its code.
            await writer.finished(timeout=settings.request_timeout)
        writer.stop()


async def converse(session: ChatSession, gateway: Gateway, fanout: RoomFanout) -> None:
    """Read the client's frames until it goes away or is closed.

    Reading never waits for the room: every frame is judged by the socket's limiter gate as it
    arrives (as the demo's are), then queued in the session's inbox, which one task answers
    in order (`answer_frames`): frames that arrive while a command is in flight ride the next
    one. Past `max_unanswered_frames` a frame is refused with an error frame of its own.
    """
    ws = session.ws
    settings = gateway.settings
    answering = asyncio.create_task(answer_frames(session, gateway, fanout))
    answering.add_done_callback(lambda task: _failed(task, session))
    try:
        while not session.writer.closing and not answering.done():
            incoming = await ws.receive()
            if incoming["type"] == "websocket.disconnect":
                break
            session.take(incoming.get("text"), incoming.get("bytes"))
    finally:
        # Frames read before the client went away are still posted (as the demo posts every
        # frame it received), within the request timeout.
        session.done_reading = True
        session.wake.set()
        try:
            if not answering.done():
                await asyncio.wait({answering}, timeout=settings.request_timeout)
        finally:
            if not answering.done():
                answering.cancel()
                await asyncio.wait({answering})
    if not answering.cancelled() and (exc := answering.exception()) is not None:
        raise exc


def _failed(task: asyncio.Task, session: ChatSession) -> None:
    if not task.cancelled() and task.exception() is not None:
        session.writer.close(CLOSE_INTERNAL, "Internal error.")  # the reader is told by the client


async def answer_frames(session: ChatSession, gateway: Gateway, fanout: RoomFanout) -> None:
    """Answer the session's inbox in order, one command in flight at a time."""
    inbox = session.inbox
    while True:
        if not inbox:
            if session.done_reading:
                return
            session.wake.clear()
            await session.wake.wait()
            continue
        head = inbox[0]
        if isinstance(head, Refusal):
            inbox.popleft()
            await session.refuse(head, fanout)
        elif session.name is None:
            inbox.popleft()
            with tracing.frame_span(session.room):
                await join(session, gateway, fanout, head)
        else:
            with tracing.frame_span(session.room):  # the frames one command answers
                await post_batch(session, gateway, fanout)


async def join(session: ChatSession, gateway: Gateway, fanout: RoomFanout, frame: Frame) -> None:
    """The name frame: join the room, flush what was held, then {"ready"}."""
    try:
        name = protocol.parse_name_frame(frame.text, frame.data, gateway.settings.max_frame_bytes)
        reply = await gateway.rooms.send(
            session.room,
            JoinRoom(session_id=session.id, name=name.name, gateway=gateway.fanouts.gateway_id),
        )
        if isinstance(reply, ErrorReply):
            raise FrameError(reply.message)
    except FrameError as exc:
        session.answered(1)
        session.send(protocol.error_frame(str(exc)))
        if exc.close_code is not None:
            session.writer.close(exc.close_code, str(exc))
        return
    except ValidationError as exc:
        session.answered(1)
        session.send(protocol.error_frame(f"Invalid frame: {describe_validation_error(exc)}."))
        return
    session.answered(1)
    session.name = name.name
    for _, queued in session.blocked:
        session.writer.send(queued)
    session.blocked.clear()
    # The client sees its own {"joined"} before {"ready"}, as in the demo.
    await fanout.delivered(reply.version, timeout=gateway.settings.request_timeout)
    # {"ready": true}, plus the user id of a credential the client showed (an extension old
    # clients ignore); a socket-only guest gets the demo's frame.
    session.writer.send(
        READY if session.identity.token is None
        else OutFrame(protocol.encode({"ready": True, "user": session.user_id}))
    )


async def post_batch(session: ChatSession, gateway: Gateway, fanout: RoomFanout) -> None:
    """Post the message frames at the head of the inbox as one command (up to the first
    frame refused at the gateway, which is answered after them, at its position)."""
    inbox = session.inbox
    limit = gateway.settings.max_frame_bytes
    posts: list[protocol.MessageFrame] = []
    while inbox and len(posts) < MAX_POST_BATCH:
        head = inbox[0]
        if isinstance(head, Refusal):
            break
        if isinstance(head, protocol.MessageFrame):  # the rest of a batch the room cut short
            posts.append(head)
            inbox.popleft()
            continue
        try:
            post = protocol.parse_message_frame(head.text, head.data, limit)
            if post.attachments:
                if posts:
                    break  # checked when it heads the inbox, after the posts before it
                await attachable(gateway, session.room, post.attachments)
        except FrameError as exc:
            if posts:
                break  # answered after the posts before it
            inbox.popleft()
            await session.after_posted(fanout)
            session.answered(1)
            session.send(protocol.error_frame(str(exc)))
            return
        inbox.popleft()
        posts.append(post)
        if post.attachments:
            break  # a post with attachments goes alone: they were checked just now
    if not posts:
        return
    try:
        # PostMessages even for one text: its reply says which broadcast shows the posts.
        command = PostMessages(
            session_id=session.id,
            texts=[p.text for p in posts],
            attachments=[list(p.attachments) for p in posts] if any(p.attachments for p in posts) else [],
            user_id=session.user_id,
        )
    except ValidationError as exc:
        # Frames the protocol checks let through but the command contract refuses: still a
        # clear error for each, never a dropped socket.
        error = protocol.error_frame(f"Invalid frame: {describe_validation_error(exc)}.")
        session.answered(len(posts))
        for _ in posts:
            session.send(error)
        return
    reply = await gateway.rooms.send(session.room, command)
    if isinstance(reply, ErrorReply):  # the whole command: every frame gets its error
        await session.after_posted(fanout)
        session.answered(len(posts))
        error = protocol.error_frame(reply.message)
        for _ in posts:
            session.send(error)
        return
    assert isinstance(reply, MessagesPosted), reply
    session.posted_version = max(session.posted_version, reply.shown)
    if reply.refused is not None:
        # The room took the first `posted` texts; the next is refused (answered once those
        # are shown), the rest go again, first in line, as a new command.
        session.answered(reply.posted + 1)
        await session.after_posted(fanout)
        session.send(protocol.error_frame(reply.refused.message))
        inbox.extendleft(reversed(posts[reply.posted + 1:]))
        return
    session.answered(len(posts))
