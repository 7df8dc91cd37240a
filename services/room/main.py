"""The room service process: hosts Room objects on NATS."""

from __future__ import annotations

from pydantic import Field

from services.room.handlers import RoomBehaviour
from services.runtime.service import ObjectServiceSettings, run


class RoomSettings(ObjectServiceSettings):
    private_room_ttl: float = Field(
        86_400.0, gt=0, description="seconds a private room may stay unjoined before it expires"
    )
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
        "closes it (its streamer died); keep it above the provider's chunk timeouts",
    )


def main() -> None:
    settings = RoomSettings()
    behaviour = RoomBehaviour(
        private_room_ttl=settings.private_room_ttl,
        ai_start_timeout=settings.ai_start_timeout,
        ai_max_duration=settings.ai_max_duration,
        ai_stall_timeout=settings.ai_stall_timeout,
    )
    run(behaviour, settings)


if __name__ == "__main__":
    main()
