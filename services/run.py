"""`make run`: nats-server and every service (room, ratelimit, projector, gateway) as processes.

Data lives under ./data (DURACHAT_DATA_DIR) and survives a restart. Ctrl-C (or SIGTERM)
stops the services first, then nats-server, each by the PID this launcher started.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

from pydantic import AliasChoices, Field

from services.gateway.settings import GatewaySettings
from services.localsystem import LocalSystem
from services.runtime.natsserver import free_port, port_is_free

log = logging.getLogger("durachat")


class LauncherSettings(GatewaySettings):
    """The gateway's address and the partitions, and what only the launcher decides."""

    data_dir: Path = Field(Path("data"), description="where nats-server, the read store and logs keep data")
    nats_port: int = Field(4222, ge=0, le=65535, description="nats-server's port (another free one if taken)")
    room_replicas: int = Field(
        1, ge=1, le=16, validation_alias=AliasChoices("DURACHAT_ROOM_REPLICAS", "ROOM_REPLICAS"),
        description="room service processes sharing the room partitions",
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = LauncherSettings()
    data_dir = settings.data_dir.resolve()
    nats_port = settings.nats_port
    if not port_is_free(nats_port):
        nats_port = free_port()
        log.info("the NATS port is taken; nats-server listens on %d instead", nats_port)
    if not port_is_free(settings.port, settings.host):
        sys.exit(f"durachat: {settings.host}:{settings.port} is in use (set DURACHAT_PORT)")

    stop = {"requested": False}

    def request_stop(signum, frame) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    system = LocalSystem(
        data_dir,
        partitions=settings.partitions,
        room_replicas=settings.room_replicas,
        nats_port=nats_port,
        host=settings.host,
        port=settings.port,
    )
    try:
        system.start()
        log.info("nats-server %s, data in %s", system.nats.url, data_dir)
        log.info("durachat is up: %s  (logs in %s; Ctrl-C stops it)", system.base_url, data_dir)
        while not stop["requested"] and system.alive():
            time.sleep(0.2)  # a supervisor's poll: notice a signal or a service that died
        if not stop["requested"]:
            log.error("a service exited; stopping everything\n%s", system.logs())
    finally:
        system.stop()
        log.info("durachat stopped")
    if not stop["requested"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
