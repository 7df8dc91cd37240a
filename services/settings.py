"""Settings groups several services read: each is defined once here and composed into the
settings of every service that needs it (`class RoomSettings(ObjectServiceSettings,
AiTimeouts)`), so a default or a rule between settings lives in one place."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsGroup(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DURACHAT_", extra="ignore")


class AiTimeouts(SettingsGroup):
    """How long an AI reply may take at each step: the room enforces the deadlines with its
    alarm (start, stall, duration); the context service's streamer enforces the chunk
    timeouts and stops itself a little before the room's duration."""

    ai_start_timeout: float = Field(
        30.0, gt=0, description="seconds an AI question waits to start streaming, then fails"
    )
    ai_max_duration: float = Field(
        180.0, gt=0, description="seconds an AI reply may stream before the room closes it"
    )
    ai_stall_timeout: float = Field(
        45.0,
        gt=0,
        description="seconds a streaming AI reply may go without new text before the room "
        "closes it (its streamer died); above the chunk timeouts",
    )
    ai_first_chunk_timeout: float = Field(30.0, gt=0, description="seconds to the first chunk")
    ai_chunk_timeout: float = Field(30.0, gt=0, description="seconds between chunks at most")

    @model_validator(mode="after")
    def _stall_above_chunk_timeouts(self) -> AiTimeouts:
        # A streamer waiting out a slow chunk must not be taken for a dead one by the room.
        slowest = max(self.ai_first_chunk_timeout, self.ai_chunk_timeout)
        if self.ai_stall_timeout <= slowest:
            raise ValueError(
                f"DURACHAT_AI_STALL_TIMEOUT ({self.ai_stall_timeout} s) must be above the chunk "
                f"timeouts (DURACHAT_AI_FIRST_CHUNK_TIMEOUT, DURACHAT_AI_CHUNK_TIMEOUT: {slowest} s)"
            )
        return self


class RateRule(SettingsGroup):
    """The chat demo's per-IP rule: each frame pushes the IP's next allowed time on by
    `rate_interval`; frames are refused while it runs more than `rate_grace` ahead."""

    rate_interval: float = Field(
        5.0, gt=0, description="seconds each frame pushes an IP's next allowed time on"
    )
    rate_grace: float = Field(
        20.0, ge=0, description="how far ahead that time may run before frames are refused"
    )


class ReadStore(SettingsGroup):
    """Where the projector writes the read models and the gateway and replay read them."""

    read_db: Path = Field(Path("data/read.db"), description="the read store (SQLite) file")


class UploadRules(SettingsGroup):
    """What the gateway (before bytes flow) and the upload service (on its record) both
    enforce of an upload."""

    upload_max_size: int = Field(
        2 * 1024**3, ge=0, description="bytes one uploaded file may have (tus Tus-Max-Size)"
    )
    upload_ttl: float = Field(
        86_400.0, gt=0, description="seconds an unfinished upload lives after its last bytes"
    )
    upload_bucket: str = Field(
        "uploads", pattern=r"^[A-Za-z0-9_-]+$", description="JetStream object store bucket of uploads"
    )
