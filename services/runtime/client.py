"""Sending commands to objects of any kind, with the retries the runtime's guarantees assume."""

from __future__ import annotations

import asyncio
import logging
from typing import Generic, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from pydantic import TypeAdapter, ValidationError

from contracts.common import Command, ErrorCode, ErrorReply
from contracts.subjects import command_subject

log = logging.getLogger(__name__)

R = TypeVar("R")


def unavailable(kind: str) -> ErrorReply:
    return ErrorReply(code=ErrorCode.UNAVAILABLE, message=f"The {kind} is unavailable; try again.")


class ObjectClient(Generic[R]):
    """Sends commands to the objects of one kind.

    A command that times out, finds no owner (a service restarting, a partition moving) or
    is refused as retryable (busy, conflict) is sent again with the same command id until
    the deadline; the object applies it once.
    """

    def __init__(
        self,
        nc: NATS,
        kind: str,
        replies: TypeAdapter[R],
        timeout: float,
        attempt_timeout: float = 2.0,
    ) -> None:
        self.nc = nc
        self.kind = kind
        self.replies = replies
        self.timeout = timeout
        self.attempt_timeout = min(attempt_timeout, timeout)
        self.unavailable = unavailable(kind)

    async def send(self, key: str, command: Command, timeout: float | None = None) -> R | ErrorReply:
        subject = command_subject(self.kind, key)
        data = command.model_dump_json().encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        backoff = 0.02
        reply: R | ErrorReply = self.unavailable
        while True:
            remaining = deadline - loop.time()
            try:
                msg = await self.nc.request(
                    subject, data, timeout=max(0.001, min(self.attempt_timeout, remaining))
                )
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                reply = self.unavailable
            else:
                try:
                    reply = self.replies.validate_json(msg.data)
                except ValidationError:
                    log.error("%s %s replied outside the contract: %r", self.kind, key, msg.data[:200])
                    return self.unavailable
                if not (isinstance(reply, ErrorReply) and reply.retryable):
                    return reply
            if loop.time() + backoff >= deadline:
                return reply
            await asyncio.sleep(backoff)  # back off before sending the same command id again
            backoff = min(backoff * 2, 0.5)
