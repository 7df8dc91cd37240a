"""What request handlers need from the running gateway, as a FastAPI dependency."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends
from nats.aio.client import Client as NATS
from starlette.requests import HTTPConnection

from contracts.context import ContextClient
from contracts.room import RoomClient
from services.gateway.identity import Identities
from services.gateway.ratelimit import IpRateLimiter
from services.gateway.rooms import RoomFanouts
from services.gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from services.gateway.uploads import ProgressFanout


@dataclass
class GatewayState:
    settings: GatewaySettings
    nc: NATS
    rooms: RoomClient
    contexts: ContextClient
    fanouts: RoomFanouts
    limiter: IpRateLimiter
    sockets_per_ip: Counter[str]

    @cached_property
    def identities(self) -> Identities:
        """Issues guest identities and verifies tokens (services/gateway/identity.py)."""
        return Identities.from_settings(self.settings)

    @cached_property
    def upload_progress(self) -> ProgressFanout:
        """Upload progress for the sockets of a room (services/gateway/uploads.py)."""
        from services.gateway.uploads import ProgressFanout

        return ProgressFanout(self.nc)


async def _gateway_state(connection: HTTPConnection) -> GatewayState:
    # async: a plain function would be run in a thread pool on every request and socket
    return connection.app.state.gateway


Gateway = Annotated[GatewayState, Depends(_gateway_state)]
