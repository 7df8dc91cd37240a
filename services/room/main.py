"""The room service: hosts Room objects on NATS."""

from __future__ import annotations

from nats.aio.client import Client as NATS
from pydantic import Field

from contracts.context import ContextClient
from contracts.room import RoomClient
from services.room.aireply import AiDeadlines
from services.room.ghosts import GatewayReaper
from services.room.handlers import RoomDeps, room
from services.runtime.kind import Clock
from services.runtime.service import (
    Hosting,
    ObjectService,
    ObjectServiceSettings,
    ServiceParts,
    run,
)
from services.settings import AiTimeouts


class RoomSettings(ObjectServiceSettings, AiTimeouts):
    private_room_ttl: float = Field(
        86_400.0, gt=0, description="seconds a private room may stay unjoined before it expires"
    )
    gateway_sweep_every: float = Field(
        5.0, gt=0, description="seconds between sweeps for the members of dead gateways "
        "(a heartbeat that disappears also starts one at once)",
    )


async def build(nc: NATS, settings: RoomSettings, clock: Clock) -> ServiceParts:
    deps = RoomDeps(
        # Half the start timeout: if the context never takes a question, the room's alarm
        # fails the reply at the start deadline.
        contexts=ContextClient(nc, timeout=settings.ai_start_timeout / 2),
        deadlines=AiDeadlines(
            settings.ai_start_timeout, settings.ai_max_duration, settings.ai_stall_timeout
        ),
        private_room_ttl=settings.private_room_ttl,
    )
    reaper = GatewayReaper(
        nc, RoomClient(nc, timeout=settings.request_timeout), settings.gateway_sweep_every,
        replicas=settings.stream_replicas,
    )
    await reaper.start()
    return ServiceParts([Hosting(room, deps)], stopping=[reaper.stop])


SERVICE = ObjectService("room", RoomSettings, build)


def main() -> None:
    run(SERVICE)


if __name__ == "__main__":
    main()
