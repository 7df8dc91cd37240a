"""Ports: `make run` checks its ports before it starts (a port a server just let go is free
again at once, its connections lingering in TIME_WAIT; a port something listens on is not);
`free_port` gives a process each port once; a system is healthy only by its gateway's word."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client import start_http_server

from services.localsystem import LocalSystem
from services.runtime.natsserver import free_port, port_is_free


def test_a_port_left_in_time_wait_is_free_and_a_listened_one_is_not():
    port = free_port()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    assert not port_is_free(port)
    # The server closes first (as a stopped gateway does): its side waits in TIME_WAIT.
    accepted.close()
    server.close()
    client.close()
    assert port_is_free(port)


def test_free_port_never_gives_this_process_a_port_twice():
    # The kernel hands a port let go back out again (126 repeats in 2000 calls, measured);
    # callers bind later, so a repeat gave two servers of one LocalSystem the same port.
    ports = [free_port() for _ in range(3000)]
    assert len(set(ports)) == len(ports)


def test_a_system_is_not_healthy_when_something_else_answers_on_its_port(tmp_path):
    # What happened once in a full run: a service's Prometheus server got the port picked for
    # the gateway, which then could not bind, and /readyz (any path is metrics there) said 200.
    server, thread = start_http_server(0, addr="127.0.0.1")
    try:
        port = server.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            assert response.status == 200  # what the old check took for a ready gateway
        assert not LocalSystem(tmp_path, port=port).healthy()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
