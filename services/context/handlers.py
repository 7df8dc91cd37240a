"""The context kind: one object per user id, holding AI settings and recent exchanges; an
accepted `Ask` starts the reply stream once its commit is stored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from contracts.context import (
    CONTEXT,
    Ask,
    AskAccepted,
    ContextCommand,
    ContextSettings,
    ContextView,
    Exchange,
    GetContext,
    PutSettings,
    RecordExchange,
)
from services.context.domainmodel import UserContext
from services.runtime.kind import Committed, ObjectContext, ObjectKind, Outcome


class Replies(Protocol):
    def start(
        self, user_id: str, ask: Ask, settings: ContextSettings, exchanges: list[Exchange]
    ) -> None: ...


@dataclass(frozen=True)
class ContextDeps:
    replies: Replies  # what streams an accepted question's reply into its room


Ctx = ObjectContext[ContextDeps]

context = ObjectKind[UserContext, ContextDeps](CONTEXT, ContextCommand, describe="a user's AI context")


def view(user_id: str, state: UserContext | None) -> ContextView:
    if state is None:
        return ContextView(user_id=user_id, version=0, settings=ContextSettings(), exchanges=[])
    return ContextView(
        user_id=user_id,
        version=state.version,
        settings=ContextSettings(**state.settings),
        exchanges=[Exchange(**e) for e in state.exchanges],
    )


def opened(state: UserContext | None, ctx: Ctx) -> UserContext:
    return state if state is not None else UserContext(user_id=ctx.key)


@context.handles(GetContext)
def get_context(command: GetContext, state: UserContext | None, ctx: Ctx) -> Outcome:
    return Outcome(state, view(ctx.key, state))


@context.handles(PutSettings)
def put_settings(command: PutSettings, state: UserContext | None, ctx: Ctx) -> Outcome:
    state = opened(state, ctx)
    state.put_settings(command.settings.model_dump(exclude_none=True))
    return Outcome(state, view(ctx.key, state))


@context.handles(Ask)
def ask(command: Ask, state: UserContext | None, ctx: Ctx) -> Outcome:
    state = opened(state, ctx)
    fresh = state.ask(command.reply_id, command.room)
    return Outcome(state, AskAccepted(duplicate=not fresh))


@context.handles(RecordExchange)
def record_exchange(command: RecordExchange, state: UserContext | None, ctx: Ctx) -> Outcome:
    state = opened(state, ctx)
    e = command.exchange
    state.record(e.reply_id, e.room, e.question, e.answer)
    return Outcome(state, view(ctx.key, state))


@context.after_commit
async def start_reply(committed: Committed, state: UserContext | None, ctx: Ctx) -> None:
    """A question newly asked is answered. On a reload (no command) nothing starts again:
    a reply whose start was lost is failed by its room's start deadline."""
    if not isinstance(committed.command, Ask) or state is None:
        return
    if any(isinstance(e, UserContext.Asked) for e in committed.events):
        current = view(ctx.key, state)
        ctx.deps.replies.start(ctx.key, committed.command, current.settings, list(current.exchanges))
