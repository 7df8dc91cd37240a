"""HTTP API over the read store: rooms, a room, and a room's messages page by page."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, Field

from services.gateway.deps import Gateway
from services.readstore import queries
from services.readstore.queries import Cursor, Order
from services.readstore.store import ReadStoreError, open_read_store

router = APIRouter(prefix="/api/rooms", tags=["read models"])

RoomName = Annotated[str, Path(min_length=1, max_length=64, description="a public name or a private id")]


class RoomSummary(BaseModel):
    name: str = Field(examples=["lobby"])
    created_at: int = Field(description="ms since the epoch")
    last_activity: int = Field(description="ms since the epoch")
    message_count: int


class RoomList(BaseModel):
    rooms: list[RoomSummary]


class MemberSeen(BaseModel):
    name: str
    first_seen: int
    last_seen: int
    joins: int


class RoomDetail(RoomSummary):
    private: bool
    members_seen: list[MemberSeen]


class AttachmentRow(BaseModel):
    id: str = Field(description="the upload id: GET /api/uploads/<id> reads it")
    name: str | None = None
    type: str | None = None
    size: int | None = None
    state: str | None = Field(None, description="null until the upload's row is projected")
    gemini_state: str | None = None


class MessageRow(BaseModel):
    id: str
    author: str = Field(examples=["alice"])
    text: str = Field(examples=["hello"])
    timestamp: int = Field(description="ms since the epoch")
    kind: str = Field(examples=["user"], description="user, ai or system")
    attachments: list[AttachmentRow] = Field(default_factory=list)


class MessagePage(BaseModel):
    messages: list[MessageRow]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at the end")


def read_store(gateway: Gateway) -> Iterator[sqlite3.Connection]:
    try:
        conn = open_read_store(gateway.settings.read_db, readonly=True)
    except ReadStoreError as exc:
        raise HTTPException(
            status_code=503, detail=f"The read store is not available: {exc}"
        ) from exc
    try:
        yield conn
    finally:
        conn.close()


ReadStore = Annotated[sqlite3.Connection, Depends(read_store)]


@router.get("", response_model=RoomList)
def list_rooms(
    store: ReadStore, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> RoomList:
    """Public rooms, most recently active first. Private rooms are never listed."""
    return RoomList(rooms=[RoomSummary(**dict(r)) for r in queries.public_rooms(store, limit)])


@router.get("/{name}", response_model=RoomDetail)
def get_room(store: ReadStore, name: RoomName) -> RoomDetail:
    """One room as the read store has it, with everyone who has been in it."""
    row = queries.room(store, name)
    if row is None:
        raise HTTPException(status_code=404, detail="No such room.")
    members = [MemberSeen(**dict(m)) for m in queries.members_seen(store, name)]
    return RoomDetail(**{**dict(row), "private": bool(row["private"])}, members_seen=members)


@router.get("/{name}/messages", response_model=MessagePage)
def list_messages(
    store: ReadStore,
    name: RoomName,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    order: Annotated[Order, Query(description="newest first, or oldest first")] = "newest",
    cursor: Annotated[str | None, Query(max_length=100, description="next_cursor of the previous page")] = None,
) -> MessagePage:
    """A page of a room's messages, by (timestamp, id); 404 for a room the store never saw."""
    try:
        after = Cursor.decode(cursor) if cursor is not None else None
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=f"cursor: {exc}") from exc
    if queries.room(store, name) is None:
        raise HTTPException(status_code=404, detail="No such room.")
    rows, following = queries.messages(store, name, limit, order, after)
    stamps = [r["timestamp"] for r in rows]
    attached = queries.attachments(store, name, min(stamps), max(stamps)) if rows else {}
    return MessagePage(
        messages=[
            MessageRow(**dict(r), attachments=[
                AttachmentRow(id=a["upload_id"], **{k: a[k] for k in AttachmentRow.model_fields if k != "id"})
                for a in attached.get(r["id"], [])
            ])
            for r in rows
        ],
        next_cursor=following.encode() if following else None,
    )
