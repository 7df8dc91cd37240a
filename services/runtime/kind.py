"""An object kind, declared: what a service writes to host a kind of object.

A kind is its name, the union of its command contracts, one handler per command, and only
the optional parts it uses:

    counter = ObjectKind[Counter, None]("counter", CounterCommand, describe="a counter")

    @counter.handles(Increment)
    def increment(command: Increment, state: Counter | None, ctx: ObjectContext[None]) -> Outcome:
        state = state or Counter(ctx.key)
        state.increment(command.by)
        return Outcome(state, Counted(value=state.value))

- `errors` maps domain exceptions to error codes: a handler raising one of them is answered
  with that code and its message, and its events are dropped. Any other exception is a bug:
  the command is answered `internal` (not retryable) and logged once.
- `@kind.after_commit` reactions run once a command's events are stored and broadcast (they
  start work outside the object, e.g. ask another object), with the command and its events.
- `broadcast` says what watchers of the object are told of each stored event.
- `wake_at` gives the object an alarm: the host schedules it, and the kind's handler of
  `DueAlarm` runs when it is due.
- `durable=False` keeps the kind's objects in memory only: nothing is read or stored.
"""

from __future__ import annotations

import time
import types
import typing
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from contracts.common import ErrorCode, ErrorReply, describe_validation_error

S = TypeVar("S")  # an object's state: an eventsourcing Aggregate for a durable kind
D = TypeVar("D")  # what the kind's handlers need (settings, clients), given by the bootstrap


class Clock(Protocol):
    def time(self) -> float:
        """Epoch seconds."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (its zero means nothing)."""


class SystemClock:
    """The clock objects run on outside tests."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK = SystemClock()


class Outcome(NamedTuple):
    """What a handler decided: the object's state after the command, and the reply."""

    state: Any
    reply: BaseModel


@dataclass(frozen=True)
class DueAlarm:
    """The command the host gives a kind's alarm handler when the alarm set for `at` is due.

    It may come more than once, or after the object moved its alarm: act only if `at` is
    still due. Raising retries it with backoff."""

    at: float

    @property
    def command_id(self) -> str:
        return f"alarm-{self.at!r}"


@dataclass(frozen=True)
class ObjectContext(Generic[D]):
    """What a handler or reaction knows besides the command and the state."""

    kind: str
    key: str
    deps: D
    clock: Clock
    spawn: Callable[[Coroutine[Any, Any, None], str], None]  # background work of the host

    def now(self) -> float:
        return self.clock.time()

    def now_ms(self) -> int:
        return int(self.clock.time() * 1000)


@dataclass(frozen=True)
class Committed:
    """A command's events, stored and broadcast. `command` is None when the host says the
    object's last commit again on load (its previous owner may have died before reacting)."""

    command: Any | None
    events: list[Any]


class BadCommand(ValueError):
    """Bytes that are no command of the kind; str() names what was wrong."""


def _no_host(work: Coroutine[Any, Any, None], name: str) -> None:
    work.close()
    raise RuntimeError(f"{name}: background work needs an ObjectHost")


Handler = Callable[[Any, Any, ObjectContext[Any]], Outcome]
Reaction = Callable[[Committed, Any, ObjectContext[Any]], Awaitable[None]]


def union_members(commands: Any) -> tuple[type, ...]:
    """The classes of a (possibly Annotated) union of command contracts."""
    if typing.get_origin(commands) is typing.Annotated:
        commands = typing.get_args(commands)[0]
    union = typing.get_origin(commands) in (typing.Union, types.UnionType)
    members = typing.get_args(commands) if union else ()
    return members or (commands,)


@dataclass
class ObjectKind(Generic[S, D]):
    """The declaration of one object kind. Build it at import time, then register handlers."""

    name: str
    commands: Any  # the union of command contracts (discriminated on `type`)
    describe: str = ""  # the kind in words, for error messages ("a chat room")
    errors: Mapping[type[Exception], ErrorCode] = field(default_factory=dict)
    broadcast: Callable[[Any], BaseModel | None] | None = None
    wake_at: Callable[[S], float | None] | None = None
    durable: bool = True
    handlers: dict[type, Handler] = field(default_factory=dict, init=False)
    reactions: list[Reaction] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.describe = self.describe or f"a {self.name}"
        self.parser: TypeAdapter[Any] = TypeAdapter(self.commands)

    def handles(self, command: type) -> Callable[[Handler], Handler]:
        """Register the handler of one command contract (or of `DueAlarm`)."""

        def register(handler: Handler) -> Handler:
            if command in self.handlers:
                raise TypeError(f"{self.name}: {command.__name__} has a handler already")
            self.handlers[command] = handler
            return handler

        return register

    def after_commit(self, reaction: Reaction) -> Reaction:
        """Register a reaction to stored commands; it must tolerate running twice."""
        self.reactions.append(reaction)
        return reaction

    def parse(self, data: bytes) -> Any:
        """The command in `data`; raises BadCommand naming what was wrong."""
        try:
            return self.parser.validate_json(data)
        except ValidationError as exc:
            raise BadCommand(
                f"Not a command of {self.describe}: {describe_validation_error(exc)}"
            ) from exc

    def decide(self, command: Any, state: S | None, ctx: ObjectContext[D]) -> Outcome:
        """Run the command's handler. A domain error (one in `errors`) becomes an error
        reply and leaves the state as it was; any other exception propagates."""
        handler = self.handlers.get(type(command))
        if handler is None:
            raise TypeError(f"{self.name}: no handler for {type(command).__name__}")
        try:
            return handler(command, state, ctx)
        except Exception as exc:
            code = self.error_code(exc)
            if code is None:
                raise
            if self.durable and state is not None and state.collect_events():  # type: ignore[attr-defined]
                raise RuntimeError(
                    f"{self.name}: {type(exc).__name__} raised after the state changed"
                ) from exc
            return Outcome(state, ErrorReply(code=code, message=str(exc)))

    def context(self, key: str, deps: D, clock: Clock = SYSTEM_CLOCK) -> ObjectContext[D]:
        """A context outside a host (unit tests of handlers): it cannot spawn work."""
        return ObjectContext(self.name, key, deps, clock, _no_host)

    def error_code(self, exc: Exception) -> ErrorCode | None:
        """The code `exc` is answered with, or None when it is not a domain error."""
        for cls in type(exc).__mro__:
            if cls in self.errors:
                return self.errors[cls]
        return None

    def check(self) -> None:
        """Refuse a declaration with a command nobody handles, or an alarm nobody answers."""
        missing = [c.__name__ for c in union_members(self.commands) if c not in self.handlers]
        if missing:
            raise TypeError(f"{self.name}: no handler for {', '.join(missing)}")
        if (self.wake_at is None) != (DueAlarm not in self.handlers):
            raise TypeError(f"{self.name}: wake_at and a DueAlarm handler go together")
        if self.durable is False and (self.wake_at is not None or self.reactions):
            raise TypeError(f"{self.name}: alarms and reactions need a durable kind")
