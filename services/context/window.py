"""What the model is sent: the system instruction and the conversation window.

The window is the user's own recent exchanges with the AI (as user/model turns), then one
user turn holding the room's recent messages and the question. An exchange from a private
room goes only into windows of that same room: what was said there must not reach the
members of another room through the AI's answer. It is trimmed to a token
budget, counted with the provider's own counter, oldest material first.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.context import Ask, ContextSettings, Exchange
from contracts.keys import is_private_room_id
from contracts.room import ChatMessage, ai_question
from services.context.provider import Generation, Provider, Turn

DEFAULT_SYSTEM_PROMPT = (
    "You are the AI in a group chat room. Several people talk here; answer the person who "
    "asked you, helpfully and concisely, in plain text."
)
MAX_COUNTS = 6  # countTokens calls spent on fitting one window at most


def generation_for(settings: ContextSettings, default_model: str, ask: Ask) -> Generation:
    """The user's settings, with the service's defaults for what they left unset."""
    lines = [settings.system_prompt or DEFAULT_SYSTEM_PROMPT]
    lines.append(f"This is room {ask.room!r}; {ask.asker} is asking.")
    if settings.language:
        lines.append(f"Answer in the language whose code is {settings.language}.")
    return Generation(
        model=settings.model or default_model,
        temperature=settings.temperature,
        system_prompt="\n".join(lines),
    )


def build_turns(ask: Ask, exchanges: list[Exchange], messages: list[ChatMessage]) -> list[Turn]:
    turns: list[Turn] = []
    for exchange in exchanges:
        turns += [Turn("user", exchange.question), Turn("model", exchange.answer)]
    last = f"{ask.asker} asks: {ask.question}"
    if messages:
        lines = "\n".join(f"{m.name}: {m.message}" for m in messages)
        last = f"Recent messages in the room, oldest first:\n{lines}\n\n{last}"
    turns.append(Turn("user", last))
    return turns


@dataclass(frozen=True)
class Window:
    turns: list[Turn]
    tokens: int  # as the provider counted them (system instruction included)
    exchanges: int  # how many of the user's exchanges made it in
    messages: int  # how many room messages made it in


def shareable(exchanges: list[Exchange], room: str) -> list[Exchange]:
    """The exchanges a window for `room` may hold: those of public rooms and of `room` itself."""
    return [e for e in exchanges if e.room == room or not is_private_room_id(e.room)]


async def fit_window(
    provider: Provider, generation: Generation, ask: Ask, exchanges: list[Exchange], budget: int
) -> Window:
    """The largest recent window within `budget` tokens (the question itself always goes)."""
    # The room's messages, without what the window holds already: this question, and the
    # user's own exchanges (their questions and the AI's answers to them).
    exchanges = shareable(exchanges, ask.room)
    asked = {ask.question} | {e.question for e in exchanges}
    answered = {e.reply_id for e in exchanges}
    messages = [
        m for m in ask.room_messages
        if not (m.name == ask.asker and ai_question(m.message) in asked)
        and not (m.kind == "ai" and m.id in answered)
    ]
    for attempt in range(MAX_COUNTS):
        turns = build_turns(ask, exchanges, messages)
        tokens = await provider.count_tokens(generation.model, generation.system_prompt, turns)
        if tokens <= budget or not (exchanges or messages) or attempt == MAX_COUNTS - 1:
            return Window(turns, tokens, len(exchanges), len(messages))
        # Drop about the surplus (4 characters a token), oldest first, taking from whichever
        # of the two holds the older material: exchanges are older than the room's recent
        # messages, so they go first, then messages; at least one item per round.
        surplus = (tokens - budget) * 4
        while surplus > 0 and (exchanges or messages):
            if exchanges:
                gone = exchanges.pop(0)
                surplus -= len(gone.question) + len(gone.answer)
            else:
                gone_message = messages.pop(0)
                surplus -= len(gone_message.name) + len(gone_message.message) + 2
    raise AssertionError("unreachable")
