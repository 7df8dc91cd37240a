"""The per-user AI context object. Pure domain: no NATS, no I/O; rebuilt from its events."""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from contracts.context import MAX_EXCHANGES

CONTEXT_NAMESPACE = uuid5(NAMESPACE_URL, "durachat:context")
RECENT_ASKS = 256  # reply ids remembered so a repeated Ask starts nothing
MAX_ANSWER_KEPT = 4000  # characters of an answer kept for later windows


class UserContext(Aggregate):
    """One user's AI settings and their recent exchanges with the AI."""

    @staticmethod
    def create_id(user_id: str) -> UUID:
        return uuid5(CONTEXT_NAMESPACE, user_id)

    @event("Opened")
    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.settings: dict = {}  # ContextSettings as a dict, unset fields left out
        self.exchanges: list[dict] = []  # oldest first, at most MAX_EXCHANGES
        self.asked: dict[str, str] = {}  # reply id -> room, oldest first

    def put_settings(self, settings: dict) -> bool:
        """Replace the settings; False when they are already these."""
        if settings == self.settings:
            return False
        self._settings_put(settings=settings)
        return True

    def ask(self, reply_id: str, room: str) -> bool:
        """Note that reply `reply_id` is to be answered; False if it was asked before."""
        if reply_id in self.asked:
            return False
        self._asked(reply_id=reply_id, room=room)
        return True

    def record(self, reply_id: str, room: str, question: str, answer: str) -> bool:
        if any(e["reply_id"] == reply_id for e in self.exchanges):
            return False
        self._exchange_recorded(
            reply_id=reply_id, room=room, question=question, answer=answer[:MAX_ANSWER_KEPT]
        )
        return True

    @event("SettingsPut")
    def _settings_put(self, settings: dict) -> None:
        self.settings = dict(settings)

    @event("Asked")
    def _asked(self, reply_id: str, room: str) -> None:
        self.asked[reply_id] = room
        if len(self.asked) > RECENT_ASKS:
            del self.asked[next(iter(self.asked))]

    @event("ExchangeRecorded")
    def _exchange_recorded(self, reply_id: str, room: str, question: str, answer: str) -> None:
        self.exchanges.append(
            {"reply_id": reply_id, "room": room, "question": question, "answer": answer}
        )
        del self.exchanges[:-MAX_EXCHANGES]
