"""Asking an object from a test: one attempt through the kind's typed client (a test sees
every refusal, `overloaded` included, instead of the retries a service's client makes)."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from contracts.client import ObjectClient
from contracts.common import Command


async def ask(nc: NATS, client: type[ObjectClient], key: str, command: Command, timeout: float = 5.0):
    """The reply of object `key` (of `client`'s kind) to `command`, or the client's error."""
    return await client(nc, timeout=timeout).send_once(key, command, timeout)
