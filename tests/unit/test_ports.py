"""`make run` checks its ports before it starts: a port a server just let go is free again
at once (its connections linger in TIME_WAIT), a port something listens on is not."""

from __future__ import annotations

import socket

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
