"""The room service process: hosts Room objects on NATS."""

from __future__ import annotations

from services.room.handlers import RoomBehaviour
from services.runtime.service import ObjectServiceSettings, run


def main() -> None:
    run(RoomBehaviour(), ObjectServiceSettings())


if __name__ == "__main__":
    main()
