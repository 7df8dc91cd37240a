"""Settings every durachat process reads, once, from DURACHAT_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RuntimeSettings(BaseSettings):
    """What every service needs to reach the bus and agree on the partitioning."""

    model_config = SettingsConfigDict(env_prefix="DURACHAT_", extra="ignore")

    env: Literal["development", "production"] = "development"
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server(s), comma-separated")
    partitions: int = Field(
        16, ge=1, le=1024, description="P in the server's partition() mapping; must match infra/nats"
    )
    stream_replicas: int = Field(1, ge=1, le=5, description="JetStream replicas of event streams")
    nats_ping_interval: float = Field(
        2.0, gt=0, description="seconds between pings to the NATS server; a server that misses "
        "more than nats_max_outstanding_pings of them (frozen, cut off) is left for another",
    )
    nats_max_outstanding_pings: int = Field(2, ge=1, description="unanswered pings before leaving a server")
    request_timeout: float = Field(
        10.0, gt=0, description="seconds a command may take end to end, retries included"
    )


class ObservabilitySettings(BaseSettings):
    """How every process reports on itself (read once, at import of metrics and logs)."""

    model_config = SettingsConfigDict(env_prefix="DURACHAT_", extra="ignore")

    metrics: Literal["on", "off"] = Field(
        "on", description="off: every metric a no-op (the observability bench's baseline)"
    )
    metrics_port: int | Literal["off"] = Field(
        0, description="where a process (not the gateway) serves /metrics; 0: a free port"
    )
    metrics_host: str = Field("127.0.0.1", description="the address it listens on")
    log_format: Literal["json", "text", "auto"] = Field(
        "auto", description="auto: text on a terminal, JSON lines otherwise"
    )

    @field_validator("metrics_port")
    @classmethod
    def _a_port(cls, port: int | str) -> int | str:
        if isinstance(port, int) and not 0 <= port <= 65535:
            raise ValueError("a port is 0 to 65535 (0: a free one), or 'off'")
        return port
