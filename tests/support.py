"""What tests share beyond fixtures: waiting on a condition, asking an object, and calling a
system's HTTP API."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from nats.aio.client import Client as NATS

from contracts.client import ObjectClient
from contracts.common import Command
from services.localsystem import LocalSystem
from services.runtime.kind import Clock

Described = str | Callable[[], str] | None


async def eventually(
    predicate: Callable[[], Any], timeout: float = 15.0, what: Described = None
) -> Any:
    """Poll `predicate` (sync, or returning an awaitable) until it gives a truthy value, and
    return that value. After `timeout` seconds an AssertionError names what was awaited:
    `what` (a text, or a function saying how things stand then), else the predicate's source."""
    for pause in _pauses(predicate, timeout, what):
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(pause)


def eventually_blocking(
    predicate: Callable[[], Any], timeout: float = 15.0, what: Described = None
) -> Any:
    """`eventually` for plain (non-async) tests: blocks the thread between checks."""
    for pause in _pauses(predicate, timeout, what):
        if result := predicate():
            return result
        time.sleep(pause)


def _pauses(predicate: Callable[[], Any], timeout: float, what: Described) -> Iterator[float]:
    """The pauses between checks: short at first (most conditions hold soon), then up to
    0.1 s (so slow ones are not polled hard); raises once `timeout` has passed."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while time.monotonic() <= deadline:
        yield pause
        pause = min(pause * 2, 0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {_described(what, predicate)}")


def _described(what: Described, predicate: Callable[[], Any]) -> str:
    if callable(what):
        return what()
    if what:
        return what
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)


def gateway(system: LocalSystem, timeout: float = 10.0) -> httpx.Client:
    """An HTTP client on `system`'s gateway: paths are relative to `system.base_url`."""
    return httpx.Client(base_url=system.base_url, timeout=timeout)


def http(system: LocalSystem, method: str, path: str, **options: Any) -> httpx.Response:
    """One request to `system`'s HTTP API on a client of its own (`options` as httpx takes
    them: json=, params=, headers=); any status is returned, none raised."""
    with gateway(system) as client:
        return client.request(method, path, **options)


async def ask(nc: NATS, client: type[ObjectClient], key: str, command: Command, timeout: float = 5.0):
    """Object `key`'s reply to `command`, through its kind's typed client, in one attempt: a
    test sees every refusal (`overloaded` included) that a service's client would retry."""
    return await client(nc, timeout=timeout).send_once(key, command, timeout)


class ManualClocks:
    """Clocks a test moves by hand: `wall` (epoch seconds, for UTC days) and `monotonic`
    (for limiters); `clock` is the two as the runtime's Clock, for a service or a handler."""

    def __init__(self, wall: float, monotonic: float = 1000.0) -> None:
        self.wall = wall
        self.monotonic = monotonic

    @property
    def clock(self) -> Clock:
        clocks = self

        class Manual:
            def time(self) -> float:
                return clocks.wall

            def monotonic(self) -> float:
                return clocks.monotonic

        return Manual()


class JwksServer:
    """A real HTTP server on 127.0.0.1 serving one JWKS document, counting its fetches."""

    def __init__(self, jwks: dict) -> None:
        self.jwks = jwks
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the http.server API names it so
                server.fetches += 1
                body = json.dumps(server.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
