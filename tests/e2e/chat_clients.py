"""Chat-demo WebSocket clients for end-to-end tests: connect, join, chat, record frames."""

from __future__ import annotations

import asyncio
import json

import websockets


class ChatClient:
    """A chat-demo client: a socket and every frame it received."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.frames: list[dict] = []

    @classmethod
    async def connect(cls, ws_url: str, room: str) -> ChatClient:
        return cls(await websockets.connect(f"{ws_url}/api/room/{room}/websocket"))

    async def send(self, frame) -> None:
        await self.ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def recv(self, timeout: float = 5.0) -> dict:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.frames.append(frame)
        return frame

    async def recv_until(self, predicate, timeout: float = 5.0) -> list[dict]:
        """Frames up to and including the first one matching `predicate`."""
        got = []
        while True:
            got.append(await self.recv(timeout))
            if predicate(got[-1]):
                return got

    async def join(self, name: str) -> list[dict]:
        """Send the name frame; returns everything received up to {"ready": true}."""
        await self.send({"name": name})
        return await self.recv_until(lambda f: f.get("ready") is True)

    async def say(self, text: str, timeout: float = 15.0) -> dict:
        """Send a message and wait for its echo: the room has acknowledged it."""
        await self.send({"message": text})
        frames = await self.recv_until(
            lambda f: f.get("message") == text or "error" in f, timeout=timeout
        )
        return frames[-1]

    def messages(self) -> list[str]:
        return [f["message"] for f in self.frames if "message" in f]

    async def close(self) -> None:
        await self.ws.close()


async def joined(system, room: str, *names: str) -> list[ChatClient]:
    """A client for each of `names` in `room` of `system`, each joined (ready) in turn."""
    clients = []
    for name in names:
        client = await ChatClient.connect(system.ws_url, room)
        await client.join(name)
        clients.append(client)
    return clients
