"""What the model is sent: a private room's exchanges stay in that room."""

from __future__ import annotations

import asyncio

from contracts.context import Ask, ContextSettings, Exchange
from contracts.keys import new_private_room_id
from services.context.provider import OfflineProvider
from services.context.window import fit_window, generation_for


def window_text(ask: Ask, exchanges: list[Exchange]) -> str:
    generation = generation_for(ContextSettings(), "offline", ask)
    window = asyncio.run(fit_window(OfflineProvider(), generation, ask, exchanges, 100_000))
    return "\n".join(turn.text for turn in window.turns)


def test_a_private_rooms_exchanges_reach_only_windows_of_that_room():
    secret_room = new_private_room_id()
    exchanges = [
        Exchange(reply_id="r1", room=secret_room, question="our launch date?", answer="May 4"),
        Exchange(reply_id="r2", room="lobby", question="what is NATS?", answer="a bus"),
    ]
    elsewhere = window_text(Ask(room="lobby", reply_id="r3", asker="ann", question="hi"), exchanges)
    assert "May 4" not in elsewhere and "our launch date?" not in elsewhere
    assert "what is NATS?" in elsewhere  # a public room's exchanges follow the user

    inside = window_text(Ask(room=secret_room, reply_id="r4", asker="ann", question="hi"), exchanges)
    assert "May 4" in inside and "what is NATS?" in inside
