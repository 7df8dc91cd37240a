"""What request handlers need from the running gateway, as a FastAPI dependency."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from nats.aio.client import Client as NATS
from starlette.requests import HTTPConnection

from contracts.context import ContextClient
from contracts.room import RoomClient
from services.gateway.ratelimit import IpRateLimiter
from services.gateway.rooms import RoomFanouts
from services.gateway.settings import GatewaySettings


@dataclass
class GatewayState:
    settings: GatewaySettings
    nc: NATS
    rooms: RoomClient
    contexts: ContextClient
    fanouts: RoomFanouts
    limiter: IpRateLimiter
    sockets_per_ip: Counter[str]


async def _gateway_state(connection: HTTPConnection) -> GatewayState:
    # async: a plain function would be run in a thread pool on every request and socket
    return connection.app.state.gateway


Gateway = Annotated[GatewayState, Depends(_gateway_state)]
