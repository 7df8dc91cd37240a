"""`make run`: nats-server, the room service and the gateway as separate processes.

Data lives under ./data (DURACHAT_DATA_DIR) and survives a restart. Ctrl-C (or SIGTERM)
stops the services first, then nats-server, each by the PID this launcher started.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.gateway.settings import GatewaySettings
from services.runtime.natsserver import NatsServerProcess, child_env, free_port, port_is_free

log = logging.getLogger("durachat")


def start_service(module: str, env: dict[str, str]) -> subprocess.Popen:
    # A session of its own: Ctrl-C reaches only the launcher, which stops services in order.
    return subprocess.Popen([sys.executable, "-m", module], env=env, start_new_session=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = GatewaySettings()
    data_dir = Path(os.environ.get("DURACHAT_DATA_DIR", "data")).resolve()
    nats_port = int(os.environ.get("DURACHAT_NATS_PORT", "4222"))
    if not port_is_free(nats_port):
        nats_port = free_port()
        log.info("port 4222 is taken; nats-server listens on %d instead", nats_port)
    if not port_is_free(settings.port, settings.host):
        sys.exit(f"durachat: {settings.host}:{settings.port} is in use (set DURACHAT_PORT)")

    nats = NatsServerProcess(data_dir / "nats", partitions=settings.partitions, port=nats_port)
    nats.start()
    log.info("nats-server %s (JetStream in %s)", nats.url, nats.store_dir / "jetstream")

    env = child_env(nats_url=nats.url, partitions=settings.partitions)
    children: list[subprocess.Popen] = []
    replicas = int(os.environ.get("ROOM_REPLICAS", "1"))
    for _ in range(replicas):
        children.append(start_service("services.room", env))
    children.append(start_service("services.gateway", env))
    log.info("durachat is up: http://%s:%d  (Ctrl-C stops it)", settings.host, settings.port)

    stop = {"requested": False}

    def request_stop(signum, frame) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        while not stop["requested"] and all(c.poll() is None for c in children):
            time.sleep(0.2)  # a supervisor's poll: notice a signal or a child that died
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        nats.stop()
        log.info("durachat stopped")
    failed = [c for c in children if c.returncode not in (0, -signal.SIGTERM, -signal.SIGINT)]
    if failed and not stop["requested"]:
        sys.exit(f"durachat: a service exited with {failed[0].returncode}")


if __name__ == "__main__":
    main()
