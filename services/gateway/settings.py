"""The gateway's settings, read once from DURACHAT_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from contracts.context import CONTEXT
from contracts.ratelimit import LIMITER, QUOTA
from contracts.subjects import ROOM
from services.gateway.identity import PLACEHOLDER_SECRET, Identities
from services.runtime.settings import RuntimeSettings
from services.settings import RateRule, ReadStore


class GatewaySettings(RuntimeSettings, RateRule, ReadStore):
    host: str = "127.0.0.1"
    token_secret: SecretStr = Field(
        SecretStr(PLACEHOLDER_SECRET),
        description="HS256 secret of guest identities and (unless a public key or JWKS is set) "
        "of user tokens; must be set outside development",
    )
    jwt_issuer: str | None = Field(None, description="user tokens must carry this `iss`")
    jwt_audience: str | None = Field(None, description="user tokens must carry this `aud`")
    jwt_leeway: float = Field(30.0, ge=0, le=600, description="seconds of clock skew allowed")
    jwt_public_key: str | None = Field(
        None,
        description="verify user tokens with this PEM public key (its text, or a file path): "
        "RS*/PS* for RSA, ES* for EC, EdDSA for Ed25519; HS256 user tokens are then refused",
    )
    jwt_jwks_url: str | None = Field(
        None, description="verify user tokens with the keys of this JWKS (by `kid`)"
    )
    guest_ttl: float = Field(
        30 * 86_400, gt=0, description="seconds a guest identity (its cookie) lasts; renewed "
        "whenever the web client opens"
    )
    cookie_secure: bool = Field(
        False, description="mark the session cookie Secure even on plain-HTTP requests "
        "(it is on HTTPS requests anyway)"
    )
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
    rate_limit: bool = Field(True, description="judge every frame by the demo's per-IP limit")
    max_unanswered_frames: int = Field(
        256, ge=1, description="Frames of one socket read but not yet answered; past it a frame "
        "is refused with an error frame (its own), never queued without bound.",
    )
    ratelimit_timeout: float = Field(
        0.25, gt=0, description="seconds to wait for the ratelimit service before deciding locally"
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="peers whose X-Forwarded-For is believed (JSON list of IPs); none by default",
    )
    gateway_ttl: int = Field(
        5, ge=1, le=300,
        description="seconds after its last heartbeat that a dead gateway's members are dropped",
    )
    ready_kinds: list[str] = Field(
        default_factory=lambda: [ROOM, CONTEXT, LIMITER, QUOTA],
        description="object kinds whose every partition must have a live owner for /readyz",
    )
    max_sockets_per_ip: int = Field(100, ge=1, description="open sockets one IP may hold on this gateway")
    send_buffer_limit: int = Field(
        256 * 1024, description="Bytes unsent to one socket before it is closed as too slow."
    )
    send_queue_limit: int = Field(
        1000, description="Frames queued for one socket before it is closed as too slow "
        "(on the portable ASGI path)."
    )

    @model_validator(mode="after")
    def _no_placeholder_secret_in_production(self) -> GatewaySettings:
        secret = self.token_secret.get_secret_value()
        if self.env != "development" and (secret == PLACEHOLDER_SECRET or len(secret.encode()) < 32):
            raise ValueError(
                "DURACHAT_TOKEN_SECRET must be set to at least 32 bytes (HS256, RFC 7518) outside "
                f"development (DURACHAT_ENV={self.env}): the placeholder would let anyone "
                "mint tokens"
            )
        Identities.from_settings(self)  # a bad public key or two key sources: refused at start
        return self
