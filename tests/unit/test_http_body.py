"""The gateway's HTTP protocol hands a body's chunks to the app as they were read: one chunk
is passed on as the same object (no copy), several are joined, and uvicorn's flow control
still sees how much is held."""

from __future__ import annotations

from services.gateway.httpbody import Chunks, http_protocol


def test_one_chunk_is_handed_on_as_it_is() -> None:
    chunk = b"x" * 300_000
    held = Chunks()
    held += chunk
    assert len(held) == 300_000
    assert bytes(held) is chunk


def test_several_chunks_are_joined_and_counted() -> None:
    held = Chunks(bytearray(b"ab"))  # what uvicorn's own bytearray held
    held += b"cd"
    held += b""
    held += b"ef"
    assert len(held) == 6
    assert bytes(held) == b"abcdef"
    assert bytes(Chunks()) == b""


def test_the_gateway_runs_it_where_httptools_is_installed() -> None:
    protocol = http_protocol()
    assert not isinstance(protocol, str) and protocol.__name__ == "ChunkedBodyProtocol"
