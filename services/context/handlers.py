"""The context service's command handlers: settings, exchanges, and starting replies."""

from __future__ import annotations

from functools import singledispatchmethod
from typing import Protocol

from pydantic import BaseModel

from contracts.context import (
    CONTEXT,
    Ask,
    AskAccepted,
    ContextSettings,
    ContextView,
    Exchange,
    GetContext,
    PutSettings,
    RecordExchange,
    context_command,
)
from services.context.domainmodel import UserContext


class Replies(Protocol):
    def start(
        self, user_id: str, ask: Ask, settings: ContextSettings, exchanges: list[Exchange]
    ) -> None: ...


def view(user_id: str, context: UserContext | None) -> ContextView:
    if context is None:
        return ContextView(user_id=user_id, version=0, settings=ContextSettings(), exchanges=[])
    return ContextView(
        user_id=user_id,
        version=context.version,
        settings=ContextSettings(**context.settings),
        exchanges=[Exchange(**e) for e in context.exchanges],
    )


class ContextBehaviour:
    """How the context service hosts UserContext objects (one per user id)."""

    kind = CONTEXT
    aggregate_type = UserContext

    def __init__(self, replies: Replies) -> None:
        self.replies = replies
        # Asks decided but not yet committed: after the commit, their replies start.
        self._pending: dict[str, Ask] = {}

    def parse(self, data: bytes):
        return context_command.validate_json(data)

    def decide(self, key: str, context: UserContext | None, command) -> tuple[UserContext | None, BaseModel]:
        return self._decide(command, key, context)

    def broadcast(self, event) -> BaseModel | None:
        return None  # nobody watches a context; replies stream into rooms

    def alarm_time(self, context: UserContext) -> float | None:
        return None

    def on_alarm(self, key: str, context: UserContext | None, at: float):
        return context, view(key, context)

    async def after_commit(self, nc, key: str, context: UserContext | None, events) -> None:
        for event in events:
            if isinstance(event, UserContext.Asked) and context is not None:
                ask = self._pending.pop(event.reply_id, None)
                if ask is None:
                    continue  # a reload saying an old commit again: that reply was started then
                current = view(key, context)
                self.replies.start(key, ask, current.settings, list(current.exchanges))

    @staticmethod
    def _open(key: str, context: UserContext | None) -> UserContext:
        return context if context is not None else UserContext(user_id=key)

    @singledispatchmethod
    def _decide(self, command, key: str, context: UserContext | None):
        raise TypeError(f"no handler for {type(command).__name__}")

    @_decide.register
    def _(self, command: GetContext, key: str, context: UserContext | None):
        return context, view(key, context)

    @_decide.register
    def _(self, command: PutSettings, key: str, context: UserContext | None):
        context = self._open(key, context)
        context.put_settings(command.settings.model_dump(exclude_none=True))
        return context, view(key, context)

    @_decide.register
    def _(self, command: Ask, key: str, context: UserContext | None):
        context = self._open(key, context)
        if not context.ask(command.reply_id, command.room):
            return context, AskAccepted(duplicate=True)
        if len(self._pending) > 10_000:  # commits that failed leave theirs behind
            self._pending.clear()
        self._pending[command.reply_id] = command
        return context, AskAccepted(duplicate=False)

    @_decide.register
    def _(self, command: RecordExchange, key: str, context: UserContext | None):
        context = self._open(key, context)
        e = command.exchange
        context.record(e.reply_id, e.room, e.question, e.answer)
        return context, view(key, context)
