"""The Room aggregate. Pure domain: no NATS, no I/O; rebuilt from its events."""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from contracts.keys import is_private_room_id
from contracts.room import HISTORY_LENGTH, MAX_MESSAGE_LENGTH, MAX_NAME_LENGTH

ROOM_NAMESPACE = uuid5(NAMESPACE_URL, "durachat:room")
RECENT_IDS = 4096  # message ids remembered to apply a retried post once


class RoomError(Exception):
    """A command the room refuses."""


class NotAMember(RoomError):
    """The session has not joined the room (or has left it)."""


class NameTooLong(RoomError):
    """A member name longer than the room allows."""


class MessageTooLong(RoomError):
    """A message longer than the room allows."""


class NoSuchRoom(RoomError):
    """A private room id that was never created."""


class AlreadyExists(RoomError):
    """The room was created before."""


def room_id(name: str) -> UUID:
    """The aggregate id of room `name`: the same on every replica, as idFromName is."""
    return uuid5(ROOM_NAMESPACE, name)


class Room(Aggregate):
    """One chat room: who is present and the recent messages."""

    @staticmethod
    def create_id(name: str, private: bool) -> UUID:
        return room_id(name)

    @event("Created")
    def __init__(self, name: str, private: bool) -> None:
        self.name = name
        self.private = private
        self.members: dict[str, str] = {}  # session id -> name, in joining order
        self.messages: list[dict] = []  # the last HISTORY_LENGTH, oldest first
        self.last_timestamp = 0
        self.recent_ids: dict[str, int] = {}  # message id -> timestamp, oldest first
        self.used = False  # someone has joined it at least once
        self.expired = False
        self.alarm_at: float | None = None

    @classmethod
    def open_public(cls, name: str) -> Room:
        if is_private_room_id(name):
            raise RoomError("a 64-hex name is a private room id; create it as private")
        return cls(name=name, private=False)

    @classmethod
    def create_private(cls, room_key: str, expire_unused_at: float) -> Room:
        """A private room; if nobody has joined it by `expire_unused_at`, it expires."""
        if not is_private_room_id(room_key):
            raise RoomError("a private room id is 64 lowercase hex")
        room = cls(name=room_key, private=True)
        room._alarm_set(at=expire_unused_at)
        return room

    def check_open(self) -> None:
        if self.expired:
            raise NoSuchRoom("No such room.")

    def alarm_due(self, at: float) -> bool:
        """The alarm set for `at` fired. Returns False when it is no longer this room's alarm
        (a duplicate delivery, or replaced since)."""
        if self.alarm_at != at:
            return False
        if self.private and not self.used:
            self._expired()
        else:
            self._alarm_cleared()
        return True

    # --- commands: check, then record the event -------------------------------------------

    def join(self, session_id: str, name: str) -> bool:
        """Add the session under `name`; False if it already was (a retried join)."""
        self.check_open()
        if len(name) > MAX_NAME_LENGTH:
            raise NameTooLong("Name too long.")
        if self.members.get(session_id) == name:
            return False
        self._member_joined(session_id=session_id, member_name=name)
        return True

    def post(self, message_id: str, session_id: str, text: str, now_ms: int) -> dict | None:
        """Post `text`; the timestamp is `now_ms`, bumped past the last one if needed.

        Returns the message, or None when `message_id` was posted before (a retry).
        """
        if message_id in self.recent_ids:
            return None
        if session_id not in self.members:
            raise NotAMember("Join the room before posting.")
        if len(text) > MAX_MESSAGE_LENGTH:
            raise MessageTooLong("Message too long.")
        timestamp = max(now_ms, self.last_timestamp + 1)
        self._message_posted(
            message_id=message_id,
            member_name=self.members[session_id],
            text=text,
            posted_at=timestamp,
        )
        return self.messages[-1]

    def leave(self, session_id: str) -> str:
        """Remove the session; returns the name it had."""
        if session_id not in self.members:
            raise NotAMember("Not in the room.")
        name = self.members[session_id]
        self._member_left(session_id=session_id, member_name=name)
        return name

    # --- events: how each one changes the state -------------------------------------------

    @event("MemberJoined")
    def _member_joined(self, session_id: str, member_name: str) -> None:
        self.members[session_id] = member_name
        self.used = True

    @event("MessagePosted")
    def _message_posted(self, message_id: str, member_name: str, text: str, posted_at: int) -> None:
        self.messages.append(
            {"id": message_id, "name": member_name, "message": text, "timestamp": posted_at}
        )
        del self.messages[:-HISTORY_LENGTH]
        self.last_timestamp = posted_at
        self.recent_ids[message_id] = posted_at
        if len(self.recent_ids) > RECENT_IDS:
            del self.recent_ids[next(iter(self.recent_ids))]

    @event("AlarmSet")
    def _alarm_set(self, at: float) -> None:
        self.alarm_at = at

    @event("AlarmCleared")
    def _alarm_cleared(self) -> None:
        self.alarm_at = None

    @event("Expired")
    def _expired(self) -> None:
        self.expired = True
        self.alarm_at = None

    @event("MemberLeft")
    def _member_left(self, session_id: str, member_name: str) -> None:
        del self.members[session_id]
