"""A request body cut into pieces: every piece PIECE_SIZE but the last, every byte once, none
copied (a piece is the chunks it is made of), and a body going past the upload's length cut
at it."""

from __future__ import annotations

import os
import random

from contracts.upload import PIECE_SIZE
from services.gateway.uploads import pieces_of


async def chunked(data: bytes, sizes: list[int]):
    position = 0
    for size in sizes:
        yield data[position : position + size]
        position += size
    if position < len(data):
        yield data[position:]


async def cut(data: bytes, sizes: list[int], limit: int) -> list[tuple[bytes, bool]]:
    return [(b"".join(parts), past) async for parts, past in pieces_of(chunked(data, sizes), limit)]


async def test_pieces_are_the_chunks_themselves_not_copies() -> None:
    data = os.urandom(2 * PIECE_SIZE + 777)
    chunks = [data[i : i + 300_000] for i in range(0, len(data), 300_000)]

    async def body():
        for chunk in chunks:
            yield chunk

    pieces = [parts async for parts, _ in pieces_of(body(), len(data))]
    for parts in pieces:
        for part in parts:
            whole = part.obj if isinstance(part, memoryview) else part
            assert any(whole is chunk for chunk in chunks)
    assert [sum(map(len, parts)) for parts in pieces] == [PIECE_SIZE, PIECE_SIZE, 777]


async def test_pieces_are_whole_and_in_order() -> None:
    data = os.urandom(3 * PIECE_SIZE + 12345)
    rng = random.Random(7)
    sizes = [rng.choice([1, 100, 65536, PIECE_SIZE, 3 * PIECE_SIZE]) for _ in range(40)]
    pieces = await cut(data, sizes, len(data))
    assert b"".join(p for p, _ in pieces) == data
    assert [len(p) for p, _ in pieces] == [PIECE_SIZE] * 3 + [12345]
    assert not any(past for _, past in pieces)


async def test_a_body_past_the_limit_is_cut_at_it() -> None:
    data = os.urandom(2 * PIECE_SIZE + 10)
    pieces = await cut(data, [65536] * 100, PIECE_SIZE + 5)
    assert [(len(p), past) for p, past in pieces] == [(PIECE_SIZE, False), (5, True)]
    assert b"".join(p for p, _ in pieces) == data[: PIECE_SIZE + 5]
    exact = await cut(data, [PIECE_SIZE, PIECE_SIZE, 10], PIECE_SIZE)
    assert [(len(p), past) for p, past in exact] == [(PIECE_SIZE, False), (0, True)]
