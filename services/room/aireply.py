"""An AI reply in a room's queue, as a value with its own state machine, and the one policy
that gives it deadlines.

    queued --dispatch--> dispatched --start--> streaming --append/alive--> streaming
    dispatched | streaming --complete/fail--> finished (it leaves the queue)

Each transition returns a new value, or refuses (NoSuchAiReply: not at that stage;
AiReplyConflict: text that does not continue the reply). Pure: no clock, no I/O; the caller
passes the time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from contracts.room import INCOMPLETE_MARK
from services.room.errors import AiReplyConflict, NoSuchAiReply


class AiStatus(StrEnum):
    QUEUED = "queued"  # behind another reply
    DISPATCHED = "dispatched"  # sent to the asker's context service; it must start by `deadline`
    STREAMING = "streaming"  # text arriving; done by `deadline`, a sign of life by `alive_until`


@dataclass(frozen=True)
class AiDeadlines:
    """How long a reply may take at each stage (seconds): dispatched until it starts,
    started until it finishes, and, if set, streaming without a sign of life."""

    start_timeout: float
    max_duration: float
    stall_timeout: float | None

    def __post_init__(self) -> None:
        for name in ("start_timeout", "max_duration", "stall_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be above 0, not {value}")

    def start_by(self, now: float) -> float:
        """The deadline of a reply dispatched at `now`."""
        return now + self.start_timeout

    def finish_by(self, now: float) -> float:
        """The deadline of a reply started at `now`."""
        return now + self.max_duration

    def alive_until(self, now: float, deadline: float) -> float | None:
        """Until when a reply that shows life at `now` may stay quiet (never past its
        deadline); None without a stall timeout."""
        if not self.stall_timeout:
            return None
        return min(now + self.stall_timeout, deadline)

    def renewal(self, reply: AiReply, now: float) -> float | None:
        """A later `alive_until` for a reply that shows life at `now`, or None. It is renewed
        only once half the stall window has passed, so the room's alarm is re-scheduled
        about every `stall_timeout / 2`, not on every chunk."""
        if not self.stall_timeout or reply.alive_until is None or reply.deadline is None:
            return None
        if reply.alive_until - now > self.stall_timeout / 2:
            return None
        until = self.alive_until(now, reply.deadline)
        return until if until is not None and until > reply.alive_until else None


@dataclass(frozen=True)
class AiReply:
    """One question to the AI and its answer so far."""

    id: str
    user_id: str  # whose context answers, and whose quota pays
    asker: str
    question: str
    status: AiStatus = AiStatus.QUEUED
    deadline: float | None = None  # dispatched: start by then; streaming: finish by then
    alive_until: float | None = None  # streaming with a stall timeout: a sign of life by then
    model: str | None = None
    label: str | None = None
    text: str = ""  # every chunk streamed so far

    def __post_init__(self) -> None:
        if not isinstance(self.status, AiStatus):  # as stored: its string
            object.__setattr__(self, "status", AiStatus(self.status))

    @property
    def started(self) -> bool:
        return self.status is AiStatus.STREAMING

    def _require(self, *stages: AiStatus, refusal: str | None = None) -> None:
        if self.status not in stages:
            wanted = " or ".join(s.value for s in stages)
            raise NoSuchAiReply(refusal or f"The AI reply is {self.status.value}, not {wanted}.")

    # --- transitions ------------------------------------------------------------------------

    def dispatch(self, deadline: float) -> AiReply:
        self._require(AiStatus.QUEUED)
        return replace(self, status=AiStatus.DISPATCHED, deadline=deadline)

    def start(
        self, model: str, label: str, deadline: float, alive_until: float | None
    ) -> AiReply:
        self._require(AiStatus.DISPATCHED)
        return replace(
            self, status=AiStatus.STREAMING, model=model, label=label, deadline=deadline,
            alive_until=alive_until,
        )

    def append(self, offset: int, text: str) -> AiReply:
        """The reply with `text` streamed at `offset`; itself if that text is there already
        (a retry)."""
        self._require(AiStatus.STREAMING, refusal="The AI reply has not started.")
        current = self.text
        if offset + len(text) <= len(current) and current[offset : offset + len(text)] == text:
            return self
        if offset != len(current):
            raise AiReplyConflict(f"The reply is at {len(current)} characters, not {offset}.")
        return replace(self, text=current + text)

    def alive(self, until: float) -> AiReply:
        self._require(AiStatus.STREAMING)
        return replace(self, alive_until=until)

    def complete(self, length: int) -> str:
        """The whole text, once the streamer's `length` matches what is stored."""
        self._require(AiStatus.DISPATCHED, AiStatus.STREAMING)
        if len(self.text) != length:
            raise AiReplyConflict(
                f"The reply has {len(self.text)} characters stored, not {length}."
            )
        return self.text

    def fail(self) -> str:
        """What stays of a reply ended early: its text marked incomplete ('' if none)."""
        self._require(AiStatus.DISPATCHED, AiStatus.STREAMING)
        return self.text + INCOMPLETE_MARK if self.text else ""

    # --- deadlines --------------------------------------------------------------------------

    def due_at(self) -> float | None:
        """When the reply fails unless it moves on (None: queued, it waits its turn)."""
        if self.status is AiStatus.QUEUED or self.deadline is None:
            return None
        return min(self.deadline, self.alive_until or self.deadline)

    def overdue(self, at: float) -> str | None:
        """Why the reply has failed by `at` (for the room's notice), or None if it has not."""
        due = self.due_at()
        if due is None or due > at:
            return None
        if not self.started:
            return "the AI service did not start answering."
        if self.deadline is not None and self.deadline <= at:
            return "it did not finish in time."
        return "the AI service stopped answering."
