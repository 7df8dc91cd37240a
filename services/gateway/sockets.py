"""Writing frames to chat sockets: once encoded, straight onto the transport.

A broadcast goes to every socket in a room, so its cost per socket is the gateway's main
cost (bench/: about 20 µs per socket and frame through the ASGI layers, a task wake-up
per frame included). Under uvicorn's sans-I/O WebSocket protocol without extensions, a
server's text frame is the same bytes for every socket (server frames are not masked), so
the gateway encodes each broadcast once and writes those bytes to each socket's transport
directly: a few µs per socket and no task per socket. Anything else (another server or
implementation, or compression negotiated) uses the ASGI path with a queue and a writer task.

Either way a socket whose client does not read is disconnected once its unsent frames pass
a bound, rather than buffered without limit.
"""

from __future__ import annotations

import asyncio
import logging
from functools import cached_property
from typing import Protocol

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.frames import Close, Frame, Opcode

from services.runtime import metrics

log = logging.getLogger(__name__)

RAW_SEND = "durachat.raw_send"
CLOSE_TOO_SLOW = 1008
TOO_SLOW = "Too slow: frames were not being read."
CLOSE_GRACE = 5.0  # seconds a closing socket may take to flush before it is cut


class OutFrame:
    """One text frame to send, encoded for the wire at most once however many sockets get it."""

    __slots__ = ("text", "__dict__")

    def __init__(self, text: str) -> None:
        self.text = text

    @cached_property
    def wire(self) -> bytes:
        return Frame(Opcode.TEXT, self.text.encode()).serialize(mask=False, extensions=[])


class RawSendCapture:
    """ASGI middleware keeping the server's own `send` in the scope of WebSocket connections,
    so a socket can find its transport (see `open_writer`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[RAW_SEND] = send
        await self.app(scope, receive, send)


class SocketWriter(Protocol):
    closing: bool

    def send(self, frame: OutFrame) -> None:
        """Queue `frame` after those already sent (never blocks)."""

    def close(self, code: int, reason: str) -> None:
        """Close after the frames already queued."""

    async def finished(self, timeout: float) -> None:
        """Wait until a close asked for has been sent (or `timeout`)."""

    def stop(self) -> None:
        """The connection is over: release what the writer holds."""


class TransportWriter:
    """Writes encoded frames onto uvicorn's transport for this socket."""

    def __init__(self, ws: WebSocket, protocol, max_buffered: int) -> None:
        self.ws = ws
        self.protocol = protocol
        self.transport: asyncio.Transport = protocol.transport
        self.max_buffered = max_buffered
        self.closing = False
        self._closer: asyncio.Task | None = None

    def send(self, frame: OutFrame) -> None:
        if self.closing or self.protocol.close_sent or self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size() > self.max_buffered:
            self._drop_slow_client()
            return
        self.transport.write(frame.wire)

    def _drop_slow_client(self) -> None:
        # The close frame goes behind what is pending; a client that wakes up in time reads
        # it (1008), one that does not is cut after the grace period, freeing its buffer.
        log.warning(
            "closing a socket that does not read (%d bytes unsent)",
            self.transport.get_write_buffer_size(),
        )
        self.closing = True
        metrics.SLOW_READER_CLOSES.inc()
        metrics.WS_CLOSES.labels(str(CLOSE_TOO_SLOW)).inc()
        close = Close(CLOSE_TOO_SLOW, TOO_SLOW).serialize()
        self.transport.write(Frame(Opcode.CLOSE, close).serialize(mask=False, extensions=[]))
        asyncio.get_running_loop().call_later(CLOSE_GRACE, self.transport.abort)

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            metrics.WS_CLOSES.labels(str(code)).inc()
            self._closer = asyncio.create_task(_close(self.ws, code, reason))

    async def finished(self, timeout: float) -> None:
        if self._closer is not None:
            await asyncio.wait({self._closer}, timeout=timeout)

    def stop(self) -> None:
        pass


class QueueWriter:
    """The portable path: a bounded queue drained by one task through ASGI sends."""

    def __init__(self, ws: WebSocket, max_frames: int) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[OutFrame | tuple[int, str]] = asyncio.Queue(max_frames)
        self.closing = False
        self.task = asyncio.create_task(self._write())

    def send(self, frame: OutFrame) -> None:
        if self.closing:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            log.warning("closing a socket that does not read (%d frames unsent)", self.queue.qsize())
            metrics.SLOW_READER_CLOSES.inc()
            self._close_now(CLOSE_TOO_SLOW, TOO_SLOW)

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        metrics.WS_CLOSES.labels(str(code)).inc()
        try:
            self.queue.put_nowait((code, reason))
            self.closing = True
        except asyncio.QueueFull:
            self._close_now(code, reason)

    def _close_now(self, code: int, reason: str) -> None:
        """Drop what is queued (the client is not reading it) and close."""
        self.closing = True
        self.task.cancel()
        self.task = asyncio.create_task(_close(self.ws, code, reason))

    async def _write(self) -> None:
        try:
            while True:
                item = await self.queue.get()
                if isinstance(item, tuple):
                    await _close(self.ws, *item)
                    return
                await self.ws.send_text(item.text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return  # the client went away; the reader sees the disconnect

    async def finished(self, timeout: float) -> None:
        await asyncio.wait({self.task}, timeout=timeout)

    def stop(self) -> None:
        self.task.cancel()


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    try:
        await asyncio.wait_for(ws.close(code, reason), CLOSE_GRACE)
    except (TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
        pass


def open_writer(ws: WebSocket, max_buffered_bytes: int, max_frames: int) -> SocketWriter:
    """The fastest writer this connection allows."""
    protocol = getattr(ws.scope.get(RAW_SEND), "__self__", None)
    conn = getattr(protocol, "conn", None)
    if (
        type(protocol).__name__ == "WebSocketsSansIOProtocol"
        and hasattr(protocol, "transport")
        and hasattr(protocol, "close_sent")
        and conn is not None
        and not getattr(conn, "extensions", None)
    ):
        return TransportWriter(ws, protocol, max_buffered_bytes)
    return QueueWriter(ws, max_frames)
