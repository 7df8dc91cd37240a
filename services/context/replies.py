"""Answering one question: quota, window, provider stream, and the reply streamed into the room.

Every piece of text the provider streams is appended to the room (`AppendAiReply`), which
stores it and broadcasts it to every member; the room is the one authority on the reply, so a
member who reconnects gets exactly what was streamed so far and the rest live. One append is
in flight per reply at a time; text that arrives meanwhile rides the next one, so a fast
provider costs fewer, larger appends instead of a queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from contracts.common import ErrorReply
from contracts.context import Ask, ContextClient, ContextSettings, Exchange, RecordExchange
from contracts.room import (
    MAX_AI_REPLY_LENGTH,
    AppendAiReply,
    CompleteAiReply,
    FailAiReply,
    RoomClient,
    StartAiReply,
)
from services.context.attachments import attached_files, copies_lost, with_files
from services.context.provider import FileRef, Provider, ProviderError, Usage
from services.context.window import fit_window, generation_for
from services.ratelimit.client import QuotaRefused, charge_ai_request, charge_ai_tokens
from services.runtime import logs, metrics, tracing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplyConfig:
    default_model: str = "gemini-2.5-flash"
    token_budget: int = 8000  # prompt tokens a window may take
    max_duration: float = 160.0  # seconds a reply may stream; see stream_limit()
    request_timeout: float = 10.0  # per room/context command, retries included


def stream_limit(room_deadline: float) -> float:
    """How long the streamer lets a reply run, given the room's deadline for it: a little
    less, so that the streamer ends a reply itself (with its own words) and the room's alarm
    is left for a streamer that died."""
    return max(room_deadline * 0.9 - 1.0, room_deadline / 2)


class ChunkSender:
    """Appends streamed text to the room's reply, one append in flight at a time."""

    def __init__(self, rooms: RoomClient, room: str, reply_id: str) -> None:
        self.rooms = rooms
        self.room = room
        self.reply_id = reply_id
        self.length = 0  # characters pushed
        self.sent = 0  # characters the room has stored
        self.pending: list[str] = []
        self.stored: list[str] = []  # the pieces the room has stored, in order
        self.refused: ErrorReply | None = None  # the room will take no more (e.g. it timed out)
        self._task: asyncio.Task | None = None

    def push(self, text: str) -> None:
        self.pending.append(text)
        self.length += len(text)
        if self._task is None:
            self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.pending and self.refused is None:
                text = "".join(self.pending)
                self.pending.clear()
                reply = await self.rooms.send(
                    self.room, AppendAiReply(reply_id=self.reply_id, offset=self.sent, text=text)
                )
                if isinstance(reply, ErrorReply):
                    self.refused = reply
                    return
                self.sent += len(text)
                self.stored.append(text)
        finally:
            self._task = None

    async def flush(self) -> None:
        """Wait until everything pushed is stored (or the room refused more)."""
        while self._task is not None:
            await asyncio.shield(self._task)


class QuestionPhase:
    """A question in `durachat_ai_questions`: `waiting` from its acceptance (quota, window,
    the room's StartAiReply), `streaming` once the room took its start, until it ends."""

    def __init__(self) -> None:
        self.state: str | None = "waiting"
        metrics.AI_QUESTIONS.labels("waiting", logs.replica()).inc()

    def streaming(self) -> None:
        if self.state == "waiting":
            metrics.AI_QUESTIONS.labels("waiting", logs.replica()).dec()
            self.state = "streaming"
            metrics.AI_QUESTIONS.labels("streaming", logs.replica()).inc()

    def end(self) -> None:
        if self.state is not None:
            metrics.AI_QUESTIONS.labels(self.state, logs.replica()).dec()
            self.state = None


class ReplyStreamer:
    """Runs the replies this context service was asked for, each as a task."""

    def __init__(self, nc: NATS, provider: Provider, config: ReplyConfig) -> None:
        self.nc = nc
        self.provider = provider
        self.config = config
        self.rooms = RoomClient(nc, timeout=config.request_timeout)
        self.contexts = ContextClient(nc, timeout=config.request_timeout)
        self.tasks: set[asyncio.Task] = set()

    def start(
        self, user_id: str, ask: Ask, settings: ContextSettings, exchanges: list[Exchange]
    ) -> None:
        task = asyncio.create_task(
            self.answer(user_id, ask, settings, exchanges), name=f"reply {ask.reply_id}"
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the replies under way: each one streaming keeps its text and is failed in its
        room at once (a reply not started yet is failed by its room's deadline)."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)

    async def answer(
        self, user_id: str, ask: Ask, settings: ContextSettings, exchanges: list[Exchange]
    ) -> None:
        metrics.AI_IN_FLIGHT.inc()
        phase = QuestionPhase()
        try:
            await self._answer(user_id, ask, settings, exchanges, phase)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reply %s in room %s failed", ask.reply_id, ask.room)
            await self._fail(ask, "server", "the AI service had an internal error.")
        finally:
            phase.end()
            metrics.AI_IN_FLIGHT.dec()

    async def _answer(
        self, user_id: str, ask: Ask, settings: ContextSettings, exchanges: list[Exchange],
        phase: QuestionPhase,
    ) -> None:
        provider = self.provider
        try:
            await charge_ai_request(self.nc, user_id)
        except QuotaRefused as exc:
            await self._fail(ask, "quota", str(exc))
            return
        generation = generation_for(settings, self.config.default_model, ask)
        try:
            window = await fit_window(provider, generation, ask, exchanges, self.config.token_budget)
        except ProviderError as exc:
            await self._fail(ask, exc.reason, exc.message)
            return
        asked_window = window
        files: tuple[FileRef, ...] = ()
        if ask.attachments:
            files = await attached_files(
                self.nc, ask, self.config.request_timeout, gemini=provider.name == "gemini"
            )
            window = with_files(window, files)
        started = await self.rooms.send(
            ask.room, StartAiReply(reply_id=ask.reply_id, model=generation.model, label=provider.label)
        )
        if isinstance(started, ErrorReply):
            log.warning("room %s will not take reply %s: %s", ask.room, ask.reply_id, started.message)
            return
        phase.streaming()
        chat = tracing.ChatSpan(generation.model, provider.label)
        sender = ChunkSender(self.rooms, ask.room, ask.reply_id)
        cancelled = False
        usage: Usage | None = None
        failure: tuple[str, str] | None = None
        asked = time.perf_counter()
        first_chunk = True
        for attempt in range(2):
            try:
                async with (
                    asyncio.timeout(self.config.max_duration),
                    aclosing(provider.stream(generation, window.turns)) as chunks,
                ):
                    async for chunk in chunks:
                        usage = chunk.usage or usage
                        text = chunk.text
                        if sender.length + len(text) > MAX_AI_REPLY_LENGTH:
                            sender.push(text[: MAX_AI_REPLY_LENGTH - sender.length])
                            failure = ("too_long", f"the reply passed {MAX_AI_REPLY_LENGTH:,} characters.")
                            break
                        if text:
                            if first_chunk:
                                first_chunk = False
                                metrics.AI_FIRST_CHUNK_SECONDS.labels(generation.model).observe(
                                    time.perf_counter() - asked
                                )
                            sender.push(text)
                        if sender.refused is not None:
                            break
            except ProviderError as exc:
                lost = exc.lost_files(files) if attempt == 0 and first_chunk else ()
                if lost:
                    # Gemini's copy of a file expired before the question reached it: the
                    # file goes to Gemini again from our store, the question once more.
                    log.info("reply %s: Gemini lost %d file(s); handing them over again", ask.reply_id, len(lost))
                    await copies_lost(self.nc, lost, self.config.request_timeout)
                    files = await attached_files(
                        self.nc, ask, self.config.request_timeout, gemini=True, need=False
                    )
                    window = with_files(asked_window, files)
                    continue
                failure = (exc.reason, exc.message)
            except TimeoutError:
                failure = ("timeout", f"the reply took longer than {self.config.max_duration:.0f} s.")
            except asyncio.CancelledError:
                # The service is stopping: store what came, say so in the room, then stop.
                cancelled = True
                if (task := asyncio.current_task()) is not None:
                    task.uncancel()  # the appends below must not be cancelled again
                failure = ("unavailable", "the AI service restarted; ask again.")
            break
        await sender.flush()
        if failure is None and sender.refused is None and sender.sent == 0:
            failure = ("server", "the AI sent an empty reply.")
        prompt_tokens = usage.prompt_tokens if usage and usage.prompt_tokens else window.tokens
        output_tokens = (
            usage.output_tokens if usage and usage.output_tokens else (sender.sent + 3) // 4
        )
        metrics.AI_REPLY_SECONDS.labels(generation.model).observe(time.perf_counter() - asked)
        chat.end(prompt_tokens, output_tokens, failure[0] if failure else None)
        metrics.AI_TOKENS.labels("input", generation.model).inc(prompt_tokens)
        metrics.AI_TOKENS.labels("output", generation.model).inc(output_tokens)
        try:
            if sender.refused is not None:
                # The room gave up on the reply (its deadline passed) and told the room so.
                metrics.AI_REPLIES.labels("refused", "room").inc()
                log.warning("room %s refused more of reply %s: %s", ask.room, ask.reply_id,
                            sender.refused.message)
            elif failure is not None:
                await self._fail(
                    ask, *failure, prompt_tokens=prompt_tokens, output_tokens=output_tokens
                )
                if cancelled:
                    raise asyncio.CancelledError
            else:
                metrics.AI_REPLIES.labels("completed", "").inc()
                await self._complete(user_id, ask, sender, prompt_tokens, output_tokens)
        finally:
            # The tokens were spent whatever became of the reply; charged after the room is
            # told, so the final message does not wait for the quota's round trip.
            await self._charge_tokens(user_id, prompt_tokens + output_tokens)

    async def _complete(
        self, user_id: str, ask: Ask, sender: ChunkSender, prompt_tokens: int, output_tokens: int
    ) -> None:
        # The exchange is recorded before the reply completes: completing dispatches the
        # room's next question, which may be this user's, and its window must include this one.
        record = RecordExchange(
            exchange=Exchange(
                reply_id=ask.reply_id, room=ask.room, question=ask.question,
                answer="".join(sender.stored),
            )
        )
        recorded = await self.contexts.send(user_id, record)
        if isinstance(recorded, ErrorReply):
            log.warning("context %s did not record %s: %s", user_id, ask.reply_id, recorded.message)
        done = await self.rooms.send(
            ask.room,
            CompleteAiReply(
                reply_id=ask.reply_id, length=sender.sent,
                prompt_tokens=prompt_tokens, output_tokens=output_tokens,
            ),
        )
        if isinstance(done, ErrorReply):
            log.warning("room %s refused to complete %s: %s", ask.room, ask.reply_id, done.message)

    async def _charge_tokens(self, user_id: str, tokens: int) -> None:
        if tokens <= 0:
            return
        try:
            await charge_ai_tokens(self.nc, user_id, tokens)
        except QuotaRefused as exc:  # spent already; the next request will be refused
            log.warning("tokens of %s not recorded: %s", user_id, exc)

    async def _fail(
        self, ask: Ask, reason: str, message: str, prompt_tokens: int = 0, output_tokens: int = 0
    ) -> None:
        metrics.AI_REPLIES.labels("failed", reason).inc()
        reply = await self.rooms.send(
            ask.room,
            FailAiReply(
                reply_id=ask.reply_id, reason=reason, message=message[:500],
                prompt_tokens=prompt_tokens, output_tokens=output_tokens,
            ),
        )
        if isinstance(reply, ErrorReply):
            log.warning("room %s refused to fail %s: %s", ask.room, ask.reply_id, reply.message)
