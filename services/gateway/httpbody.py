"""uvicorn's httptools protocol, handing a request body to the app in the chunks it was read in.

uvicorn adds each chunk of a request body to a bytearray (`cycle.body += chunk`) and hands
the app `bytes(cycle.body)`: two copies of every byte of a body, on the event loop that also
reads the body and sends it on. For an upload (gigabytes through PATCH) that is a tenth of
the gateway's CPU per byte. With this protocol the cycle's body is a `Chunks`: `+=` keeps the
chunk as it is (httptools made it a bytes of its own), and `bytes()` of a single chunk is
that chunk (no copy), of several their join. Flow control (reading pauses past 64 KiB held),
100-continue, disconnects and everything else stay uvicorn's own.
"""

from __future__ import annotations

import asyncio

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn's own choice (h11), with its copies
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class Chunks:
    """A request body's chunks not yet handed to the app, as uvicorn's bytearray is used."""

    __slots__ = ("parts", "size")

    def __init__(self, held: bytes | bytearray = b"") -> None:
        self.parts: list[bytes] = [bytes(held)] if held else []
        self.size = len(held)

    def __iadd__(self, chunk: bytes) -> Chunks:
        if chunk:
            self.parts.append(chunk)
            self.size += len(chunk)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        if len(self.parts) == 1:
            return self.parts[0]
        return b"".join(self.parts)


if HttpToolsProtocol is not None:

    class ChunkedBodyProtocol(HttpToolsProtocol):
        def on_body(self, body: bytes) -> None:
            cycle = self.cycle
            if type(cycle.body) is not Chunks:
                cycle.body = Chunks(cycle.body)  # uvicorn put a fresh bytearray there
            super().on_body(body)


def http_protocol() -> type[asyncio.Protocol] | str:
    """What `uvicorn.run(http=...)` is given."""
    return ChunkedBodyProtocol if HttpToolsProtocol is not None else "auto"
