"""The Room aggregate. Pure domain: no NATS, no I/O; rebuilt from its events.

Its three jobs, in this order below: members and history, a private room's expiry, and the
queue of AI replies (each reply's own rules are in services.room.aireply). The events it
records are declared in services.room.events.
"""

from __future__ import annotations

from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from contracts.context import guest_user
from contracts.keys import is_private_room_id
from contracts.room import (
    AI_NAME,
    HISTORY_CHARS,
    HISTORY_LENGTH,
    MAX_AI_QUEUE,
    MAX_AI_REPLY_LENGTH,
    MAX_MESSAGE_LENGTH,
    MAX_NAME_LENGTH,
    ROOM_NAMESPACE,
    SYSTEM_NAME,
    ai_question,
    is_reserved_name,
    reply_id_of,
)
from services.room import events
from services.room.aireply import AiDeadlines, AiReply, AiStatus
from services.room.errors import (  # noqa: F401  (re-exported: the room's refusals)
    AiReplyConflict,
    AlreadyExists,
    MessageTooLong,
    NameReserved,
    NameTooLong,
    NoSuchAiReply,
    NoSuchRoom,
    NotAMember,
    RoomError,
)

RECENT_IDS = 4096  # message ids remembered to apply a retried post once


def room_id(name: str) -> UUID:
    """The aggregate id of room `name`: the same on every replica, as idFromName is."""
    return uuid5(ROOM_NAMESPACE, name)


class Room(Aggregate):
    """One chat room: who is present, the recent messages, and the AI replies under way."""

    # v1 snapshots have no AI queue; v2 ones hold each reply as a dict, v3 as an AiReply;
    # v4 ones also say which gateway holds each member.
    class_version = 4

    @staticmethod
    def upcast_v1_v2(state: dict) -> None:
        state["ai"] = {}

    @staticmethod
    def upcast_v2_v3(state: dict) -> None:
        state["ai"] = {
            reply_id: AiReply(
                id=r["id"], user_id=r["user_id"], asker=r["asker"], question=r["question"],
                status=AiStatus(r["status"]), deadline=r.get("deadline"),
                alive_until=r.get("alive_until"), model=r.get("model"), label=r.get("label"),
                text=r.get("text", ""),
            )
            for reply_id, r in state["ai"].items()
        }

    @staticmethod
    def upcast_v3_v4(state: dict) -> None:
        state["member_gateways"] = {}

    # The stored events (services.room.events); the aggregate subclasses each, so they are
    # stored as `services.room.domainmodel:Room.<Name>`, the topics already in the streams.
    Created = events.Created
    MemberJoined = events.MemberJoined
    MemberLeft = events.MemberLeft
    MessagePosted = events.MessagePosted
    SystemMessagePosted = events.SystemMessagePosted
    AlarmSet = events.AlarmSet
    AlarmCleared = events.AlarmCleared
    Expired = events.Expired
    AiReplyRequested = events.AiReplyRequested
    AiReplyDispatched = events.AiReplyDispatched
    AiReplyStarted = events.AiReplyStarted
    AiReplyAlive = events.AiReplyAlive
    AiReplyChunk = events.AiReplyChunk
    AiReplyCompleted = events.AiReplyCompleted
    AiReplyFailed = events.AiReplyFailed

    @staticmethod
    def create_id(name: str, private: bool) -> UUID:
        return room_id(name)

    @event(Created)
    def __init__(self, name: str, private: bool) -> None:
        self.name = name
        self.private = private
        self.members: dict[str, str] = {}  # session id -> name, in joining order
        self.member_gateways: dict[str, str] = {}  # session id -> the gateway holding it
        self.messages: list[dict] = []  # the last HISTORY_LENGTH, oldest first
        self.last_timestamp = 0
        self.recent_ids: dict[str, int] = {}  # message id -> timestamp, oldest first
        self.used = False  # someone has joined it at least once
        self.expired = False
        self.alarm_at: float | None = None
        # AI replies not finished yet, in queue order; the first is being answered.
        self.ai: dict[str, AiReply] = {}

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

    # --- members and history ----------------------------------------------------------------

    def join(self, session_id: str, name: str, gateway_id: str | None = None) -> bool:
        """Add the session under `name`, held by gateway `gateway_id`; False if it already
        was (a retried join)."""
        self.check_open()
        if len(name) > MAX_NAME_LENGTH:
            raise NameTooLong("Name too long.")
        if is_reserved_name(name):  # look-alikes too: " AI ", "ＡＩ", "АІ"
            raise NameReserved(f"The name {name!r} is reserved; choose another.")
        if self.members.get(session_id) == name and (
            gateway_id is None or self.member_gateways.get(session_id) == gateway_id
        ):
            return False
        # New, renamed, or held by another gateway now (its old one lapsed and rejoined it
        # under a new id): recorded, so the right gateway's liveness decides.
        self._member_joined(session_id=session_id, member_name=name, gateway_id=gateway_id)
        return True

    def post(
        self,
        message_id: str,
        session_id: str,
        text: str,
        *,
        now_ms: int,
        now: float,
        deadlines: AiDeadlines,
        user_id: str | None = None,
        attachments: tuple[str, ...] = (),
    ) -> dict | None:
        """Post `text`; the timestamp is `now_ms`, bumped past the last one if needed.

        A message addressed to the AI (`@ai ...`) also asks for an AI reply on behalf of
        `user_id`: it joins the room's queue, and is dispatched at once (at `now`) if the
        queue was empty. Returns the message, or None when `message_id` was posted before.
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
            attachments=tuple(attachments),
        )
        message = self.messages[-1]
        question = ai_question(text)
        if question is not None:
            self._ask_ai(message_id, self.members[session_id], user_id, question, timestamp,
                         now_ms=now_ms, now=now, deadlines=deadlines)
        return message

    def leave(self, session_id: str) -> str:
        """Remove the session; returns the name it had."""
        if session_id not in self.members:
            raise NotAMember("Not in the room.")
        name = self.members[session_id]
        self._member_left(session_id=session_id, member_name=name)
        return name

    def drop_gateway(self, gateway_id: str) -> list[str]:
        """Every member held by gateway `gateway_id` leaves (it is gone); their names."""
        gone = [s for s, g in self.member_gateways.items() if g == gateway_id and s in self.members]
        return [self.leave(session_id) for session_id in gone]

    def _system_message(self, message_id: str, text: str, now_ms: int) -> None:
        self._system_message_posted(
            message_id=message_id, text=text, posted_at=max(now_ms, self.last_timestamp + 1)
        )

    # --- alarms: a private room's expiry, the AI reply's deadline ---------------------------

    def wake_at(self) -> float | None:
        """When the room wants its alarm: a private room's expiry, or the deadline of the AI
        reply being answered, whichever comes first."""
        head = self._ai_head()
        times = [t for t in (self.alarm_at, head and head.due_at()) if t is not None]
        return min(times) if times else None

    def alarm_due(self, at: float, *, now: float, now_ms: int, deadlines: AiDeadlines) -> bool:
        """The alarm set for `at` fired. Does only what is due by `at`: a duplicate delivery,
        or an alarm replaced since, finds nothing to do and returns False."""
        acted = False
        if self.alarm_at is not None and self.alarm_at <= at:
            if self.private and not self.used:
                self._expired()
            else:
                self._alarm_cleared()
            acted = True
        head = self._ai_head()
        why = head.overdue(at) if head is not None else None
        if head is not None and why is not None:
            self._fail_ai(
                head, "timeout", why, now_ms=now_ms, now=now, deadlines=deadlines,
                provider_called=head.started,
            )
            acted = True
        return acted

    # --- the AI queue: one reply answered at a time, in the order asked ---------------------

    def _ai_head(self) -> AiReply | None:
        return next(iter(self.ai.values()), None)

    def _active_ai(self, reply_id: str) -> AiReply:
        head = self._ai_head()
        if head is None or head.id != reply_id:
            raise NoSuchAiReply("No such AI reply in progress.")
        return head

    def _ask_ai(
        self, message_id: str, asker: str, user_id: str | None, question: str, asked_at: int,
        *, now_ms: int, now: float, deadlines: AiDeadlines,
    ) -> None:
        if len(self.ai) >= MAX_AI_QUEUE:
            self._system_message(
                f"{message_id}:ai-busy",
                f"The AI has {MAX_AI_QUEUE} questions waiting; {asker}, ask again in a moment.",
                now_ms,
            )
            return
        self._ai_reply_requested(
            reply_id=reply_id_of(message_id),
            user_id=user_id or guest_user(asker),
            asker=asker,
            question=question,
            requested_at=asked_at,
        )
        self._dispatch_next(now, deadlines)

    def start_ai(
        self, reply_id: str, model: str, label: str, *, now: float, deadlines: AiDeadlines
    ) -> bool:
        """The context service starts streaming the head of the queue; False if it had.

        The reply must finish within the deadlines' `max_duration`, and, with a stall timeout,
        show signs of life (appends) within that, or the room's alarm fails it: a streamer
        that died leaves its reply open only that long."""
        head = self._active_ai(reply_id)
        if head.started:
            return False
        deadline = deadlines.finish_by(now)
        self._ai_reply_started(
            reply_id=reply_id, asker=head.asker, model=model, label=label, deadline=deadline,
            alive_until=deadlines.alive_until(now, deadline),
        )
        return True

    def append_ai(
        self, reply_id: str, offset: int, text: str, *, now: float, deadlines: AiDeadlines
    ) -> bool:
        """Streamed text at `offset`; False for a retry of text already appended. An append
        is a sign of life: it may renew the reply's stall window (`AiReplyAlive`)."""
        head = self._active_ai(reply_id)
        after = head.append(offset, text)
        if after is head:
            return False
        if len(after.text) > MAX_AI_REPLY_LENGTH:
            raise AiReplyConflict(f"An AI reply holds at most {MAX_AI_REPLY_LENGTH} characters.")
        self._ai_reply_chunk(reply_id=reply_id, offset=offset, text=text)
        until = deadlines.renewal(head, now)
        if until is not None:
            self._ai_reply_alive(reply_id=reply_id, until=until)
        return True

    def complete_ai(
        self, reply_id: str, length: int, prompt_tokens: int, output_tokens: int,
        *, now_ms: int, now: float, deadlines: AiDeadlines,
    ) -> dict | None:
        """The reply is whole: it becomes a message by the AI. Dispatches the next question.
        Returns the message, or None for a retry of a reply already finished."""
        if reply_id in self.recent_ids:
            return None
        head = self._active_ai(reply_id)
        text = head.complete(length)
        self._ai_reply_completed(
            reply_id=reply_id,
            user_id=head.user_id,
            text=text,
            posted_at=max(now_ms, self.last_timestamp + 1),
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
        )
        self._dispatch_next(now, deadlines)
        return self.messages[-1]

    def fail_ai(
        self, reply_id: str, reason: str, message: str, prompt_tokens: int, output_tokens: int,
        *, now_ms: int, now: float, deadlines: AiDeadlines,
    ) -> None:
        if reply_id in self.recent_ids:
            return  # a retry of a reply already finished
        head = self._active_ai(reply_id)
        self._fail_ai(
            head, reason, message, now_ms=now_ms, now=now, deadlines=deadlines,
            provider_called=head.started or reason not in ("quota", "unavailable"),
            prompt_tokens=prompt_tokens, output_tokens=output_tokens,
        )

    def _fail_ai(
        self, head: AiReply, reason: str, message: str, *, now_ms: int, now: float,
        deadlines: AiDeadlines, provider_called: bool, prompt_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """End the reply early: what was streamed stays, marked incomplete; the room is told."""
        self._ai_reply_failed(
            reply_id=head.id,
            user_id=head.user_id,
            reason=reason,
            text=head.fail(),
            posted_at=max(now_ms, self.last_timestamp + 1),
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            provider_called=provider_called,
        )
        self._system_message(
            f"{head.id}:failed", f"The AI could not answer {head.asker}: {message}", now_ms
        )
        self._dispatch_next(now, deadlines)

    def _dispatch_next(self, now: float, deadlines: AiDeadlines) -> None:
        head = self._ai_head()
        if head is not None and head.status is AiStatus.QUEUED:
            self._ai_reply_dispatched(reply_id=head.id, deadline=deadlines.start_by(now))

    # --- events: how each one changes the state ---------------------------------------------

    @event(MemberJoined)
    def _member_joined(self, session_id: str, member_name: str, gateway_id: str | None = None) -> None:
        self.members[session_id] = member_name
        if gateway_id is not None:
            self.member_gateways[session_id] = gateway_id
        else:
            self.member_gateways.pop(session_id, None)
        self.used = True

    @event(MemberLeft)
    def _member_left(self, session_id: str, member_name: str) -> None:
        del self.members[session_id]
        self.member_gateways.pop(session_id, None)

    @event(MessagePosted)
    def _message_posted(
        self, message_id: str, member_name: str, text: str, posted_at: int,
        attachments: tuple[str, ...] = (),
    ) -> None:
        message: dict = {"id": message_id, "name": member_name, "message": text, "timestamp": posted_at}
        if attachments:
            message["attachments"] = list(attachments)
        self._remember(message)

    @event(SystemMessagePosted)
    def _system_message_posted(self, message_id: str, text: str, posted_at: int) -> None:
        self._remember(
            {"id": message_id, "name": SYSTEM_NAME, "message": text, "timestamp": posted_at,
             "kind": "system"}
        )

    def _remember(self, message: dict) -> None:
        self.messages.append(message)
        del self.messages[:-HISTORY_LENGTH]
        kept = sum(len(m["message"]) for m in self.messages)
        while kept > HISTORY_CHARS and len(self.messages) > 1:
            kept -= len(self.messages.pop(0)["message"])
        self.last_timestamp = message["timestamp"]
        self.recent_ids[message["id"]] = message["timestamp"]
        if len(self.recent_ids) > RECENT_IDS:
            del self.recent_ids[next(iter(self.recent_ids))]

    @event(AlarmSet)
    def _alarm_set(self, at: float) -> None:
        self.alarm_at = at

    @event(AlarmCleared)
    def _alarm_cleared(self) -> None:
        self.alarm_at = None

    @event(Expired)
    def _expired(self) -> None:
        self.expired = True
        self.alarm_at = None

    @event(AiReplyRequested)
    def _ai_reply_requested(
        self, reply_id: str, user_id: str, asker: str, question: str, requested_at: int
    ) -> None:
        self.ai[reply_id] = AiReply(id=reply_id, user_id=user_id, asker=asker, question=question)

    @event(AiReplyDispatched)
    def _ai_reply_dispatched(self, reply_id: str, deadline: float) -> None:
        self.ai[reply_id] = self.ai[reply_id].dispatch(deadline)

    @event(AiReplyStarted)
    def _ai_reply_started(
        self, reply_id: str, asker: str, model: str, label: str, deadline: float,
        alive_until: float | None = None,  # not stored before the stall timeout existed
    ) -> None:
        self.ai[reply_id] = self.ai[reply_id].start(model, label, deadline, alive_until)

    @event(AiReplyAlive)
    def _ai_reply_alive(self, reply_id: str, until: float) -> None:
        self.ai[reply_id] = self.ai[reply_id].alive(until)

    @event(AiReplyChunk)
    def _ai_reply_chunk(self, reply_id: str, offset: int, text: str) -> None:
        self.ai[reply_id] = self.ai[reply_id].append(offset, text)

    @event(AiReplyCompleted)
    def _ai_reply_completed(
        self, reply_id: str, user_id: str, text: str, posted_at: int,
        prompt_tokens: int, output_tokens: int,
    ) -> None:
        del self.ai[reply_id]
        self._remember(
            {"id": reply_id, "name": AI_NAME, "message": text, "timestamp": posted_at, "kind": "ai"}
        )

    @event(AiReplyFailed)
    def _ai_reply_failed(
        self, reply_id: str, user_id: str, reason: str, text: str, posted_at: int,
        prompt_tokens: int, output_tokens: int, provider_called: bool,
    ) -> None:
        del self.ai[reply_id]
        self.recent_ids[reply_id] = posted_at  # a retried FailAiReply finds it finished
        if text:
            self._remember(
                {"id": reply_id, "name": AI_NAME, "message": text, "timestamp": posted_at, "kind": "ai"}
            )
