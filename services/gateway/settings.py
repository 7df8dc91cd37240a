"""The gateway's settings, read once from DURACHAT_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from services.runtime.settings import RuntimeSettings


class GatewaySettings(RuntimeSettings):
    host: str = "127.0.0.1"
    read_db: Path = Field(Path("data/read.db"), description="the read store the projector writes")
    port: int = Field(8000, ge=0, le=65535)
    max_frame_bytes: int = Field(
        4096, description="A text frame above this is refused with an error frame."
    )
    ws_max_size: int = Field(
        1 << 20, description="Protocol limit: a frame above this closes the socket with 1009."
    )
    ws_protocol: Literal["websockets", "websockets-sansio", "wsproto"] = Field(
        "websockets-sansio", description="uvicorn's WebSocket implementation"
    )
    ws_per_message_deflate: bool = Field(
        False,
        description="Compress frames. Off: chat frames are ~100 bytes, and zlib's state costs "
        "about 45 KiB per socket and doubles the gateway's CPU per frame (bench/).",
    )
    send_buffer_limit: int = Field(
        256 * 1024, description="Bytes unsent to one socket before it is closed as too slow."
    )
    send_queue_limit: int = Field(
        1000, description="Frames queued for one socket before it is closed as too slow "
        "(on the portable ASGI path)."
    )
