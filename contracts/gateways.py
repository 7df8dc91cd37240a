"""Gateway liveness: how room objects learn that a gateway holding their members is gone.

- Bucket `gateways` (in memory): key `<gateway id>`, each live gateway's heartbeat with a
  per-key TTL (`DURACHAT_GATEWAY_TTL`), so the server expires a gateway that dies.
- Bucket `gateway-rooms` (on disk, survives restarts): key `<gateway id>.<room token>`, value
  the room's name, written by a gateway before its first socket joins that room.

A gateway that is gone (no heartbeat) but still listed in `gateway-rooms` is reaped by the
room service: each listed room is sent `DropGateway` (its members joined through that
gateway leave, with a quit broadcast), then the entry is removed.
"""

from __future__ import annotations

from typing import Annotated

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue
from pydantic import Field

from contracts.keys import subject_token

GATEWAYS_BUCKET = "gateways"
GATEWAY_ROOMS_BUCKET = "gateway-rooms"

# A gateway id is one KV key token: letters, digits and '-'.
GatewayId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


def gateways_config(replicas: int = 1) -> KeyValueConfig:
    return KeyValueConfig(
        bucket=GATEWAYS_BUCKET, history=1, storage=StorageType.MEMORY, replicas=replicas,
        max_bytes=1 << 20, direct=True, limit_marker_ttl=1.0,
    )


def gateway_rooms_config(replicas: int = 1) -> KeyValueConfig:
    return KeyValueConfig(
        bucket=GATEWAY_ROOMS_BUCKET, history=1, storage=StorageType.FILE, replicas=replicas,
        max_bytes=64 << 20, direct=True,
    )


async def open_bucket(nc: NATS, config: KeyValueConfig) -> KeyValue:
    """Bucket `config.bucket`, created with `config` if absent."""
    js = nc.jetstream()
    try:
        return await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await js.create_key_value(config)
        except nats.js.errors.BadRequestError:  # made by another process meanwhile
            return await js.key_value(config.bucket)


def gateway_room_key(gateway: str, room: str) -> str:
    return f"{gateway}.{subject_token(room)}"
