"""The room service process: hosts Room objects on NATS."""

from __future__ import annotations

from pydantic import Field

from services.room.handlers import RoomBehaviour
from services.runtime.service import ObjectServiceSettings, run


class RoomSettings(ObjectServiceSettings):
    private_room_ttl: float = Field(
        86_400.0, gt=0, description="seconds a private room may stay unjoined before it expires"
    )


def main() -> None:
    settings = RoomSettings()
    run(RoomBehaviour(private_room_ttl=settings.private_room_ttl), settings)


if __name__ == "__main__":
    main()
