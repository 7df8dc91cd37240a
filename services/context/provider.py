"""The AI provider the context service streams replies from: Gemini through google-genai, or
an offline stand-in when no GEMINI_API_KEY is set, so the system also works with no network.

Every way a call can fail ends as a `ProviderError` whose `reason` is one of the `AiFailure`
reasons of `contracts/room.py` and whose message is a sentence chat users can read.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

logger = logging.getLogger(__name__)

# The provider's share of `contracts.room.AiFailure` (the rest are decided by the service).
ProviderFailure = Literal[
    "timeout", "rate_limited", "blocked", "network", "cut", "server", "bad_request"
]

OFFLINE_PREFIX = "[offline AI: no GEMINI_API_KEY is set] "

# Finish reasons that end a reply normally; those that mean the provider's policy stopped it.
# Any other reason (OTHER, MALFORMED_RESPONSE, ...) leaves the reply unfinished: "cut".
NORMAL_FINISH = frozenset({"STOP", "MAX_TOKENS"})
BLOCKED_FINISH = frozenset({
    "SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION",
    "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR",
})


@dataclass(frozen=True)
class FileRef:
    """A file that came with a turn: an upload, and its Gemini Files API copy if handed off."""

    name: str
    mime: str
    size: int
    uri: str | None = None  # the Gemini file's URI, once ACTIVE
    upload_id: str = ""  # the upload it is

    def described(self) -> str:
        return f"{self.name or 'a file'} ({self.mime}, {self.size:,} bytes)"


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "model"]
    text: str
    files: tuple[FileRef, ...] = ()


@dataclass(frozen=True)
class Generation:
    model: str  # e.g. "gemini-2.5-flash"
    temperature: float | None
    system_prompt: str | None  # the caller already appended any language instruction


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class Chunk:
    text: str  # may be "" for a last chunk that only carries usage
    usage: Usage | None = None  # the provider's figures when it sends them (latest wins)


class ProviderError(Exception):
    """The provider could not give a (whole) reply; `message` says why to chat users."""

    def __init__(self, reason: ProviderFailure, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status  # the provider's HTTP status, when it answered with one

    def lost_files(self, files: tuple[FileRef, ...]) -> tuple[FileRef, ...]:
        """The files of the prompt the provider says it has no copy of any more: a 403 for a
        prompt with Gemini files (its copy expired, 48 h after upload). The one its message
        names, else all of them."""
        sent = tuple(f for f in files if f.uri is not None)
        if self.status != 403 or not sent:
            return ()
        named = tuple(f for f in sent if f.uri and f.uri.rsplit("/", 1)[-1] in self.message)
        return named or sent


class Provider(Protocol):
    name: str  # "gemini" | "offline"
    label: str  # who answers, shown to users: "Gemini" | "offline AI"

    async def count_tokens(self, model: str, system_prompt: str | None, turns: list[Turn]) -> int:
        """Tokens the provider would charge for this prompt."""
        ...

    def stream(self, generation: Generation, turns: list[Turn]) -> AsyncIterator[Chunk]:
        """The reply to `turns` (the last user turn is the question), chunk by chunk."""
        ...

    async def aclose(self) -> None: ...


def make_provider(
    api_key: str | None,
    base_url: str | None = None,
    *,
    first_chunk_timeout: float = 30.0,
    chunk_timeout: float = 30.0,
    offline_delay: float = 0.03,
) -> Provider:
    """Gemini when an API key is given, else the offline provider."""
    if api_key and api_key.strip():
        return GeminiProvider(
            api_key.strip(), base_url,
            first_chunk_timeout=first_chunk_timeout, chunk_timeout=chunk_timeout,
        )
    return OfflineProvider(delay=offline_delay)


# --- Gemini ---------------------------------------------------------------------------------


def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(errors of connecting, every transport error) of whichever HTTP library google-genai
    uses: httpx2 by default in 3.x, httpx (GOOGLE_GENAI_HTTP_CLIENT=httpx) or aiohttp when
    installed."""
    connecting: list[type[BaseException]] = []
    transport: list[type[BaseException]] = [OSError]
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        connecting += [module.ConnectError, module.ConnectTimeout, module.ProxyError]
        transport.append(module.TransportError)
    try:
        import aiohttp
    except ImportError:
        pass
    else:
        connecting.append(aiohttp.ClientConnectorError)
        transport.append(aiohttp.ClientError)
    return tuple(connecting), tuple(transport)


CONNECT_ERRORS, TRANSPORT_ERRORS = _transport_errors()


def _api_failure(exc: genai_errors.APIError) -> ProviderError:
    code, status = exc.code, exc.status or ""
    detail = " ".join(str(exc.message or "").split())[:200]
    if code == 429 or status == "RESOURCE_EXHAUSTED":
        return ProviderError(
            "rate_limited",
            f"The AI provider is rate-limiting requests (HTTP {code}); try again in a minute.",
        )
    if isinstance(code, int) and 400 <= code < 500:
        return ProviderError(
            "bad_request",
            f"The AI provider refused the request (HTTP {code} {status}: {detail}).",
            status=code,
        )
    return ProviderError(
        "server", f"The AI provider had a server error (HTTP {code} {status}); try again later."
    )


def _transport_failure(exc: BaseException, *, started: bool) -> ProviderError:
    # Before the first chunk a dropped or refused connection means the provider could not be
    # reached; after it, the reply was cut off in the middle.
    if started and not isinstance(exc, CONNECT_ERRORS):
        return ProviderError(
            "cut", "The connection to the AI provider dropped in the middle of the reply."
        )
    return ProviderError("network", f"Could not reach the AI provider ({_describe(exc)}).")


def _describe(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _content(turn: Turn) -> types.Content:
    parts = [
        types.Part(file_data=types.FileData(file_uri=f.uri, mime_type=f.mime))
        for f in turn.files
        if f.uri is not None
    ]
    return types.Content(role=turn.role, parts=[*parts, types.Part(text=turn.text)])


def _text(response: types.GenerateContentResponse) -> str:
    if not response.candidates or response.candidates[0].content is None:
        return ""
    parts = response.candidates[0].content.parts or []
    # Thought summaries are the model's notes, not the reply.
    return "".join(part.text for part in parts if part.text and not part.thought)


def _usage(metadata: types.GenerateContentResponseUsageMetadata | None) -> Usage | None:
    if metadata is None:
        return None
    # Thinking tokens are billed as output, so they count against the user's quota too.
    output = (metadata.candidates_token_count or 0) + (metadata.thoughts_token_count or 0)
    return Usage(prompt_tokens=metadata.prompt_token_count or 0, output_tokens=output)


def _finish_reason(response: types.GenerateContentResponse) -> str | None:
    if not response.candidates or response.candidates[0].finish_reason is None:
        return None
    reason = response.candidates[0].finish_reason
    return getattr(reason, "value", str(reason))


class GeminiProvider:
    """Google's Gemini API through the official google-genai client (async, streamed)."""

    name = "gemini"
    label = "Gemini"

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        first_chunk_timeout: float = 30.0,
        chunk_timeout: float = 30.0,
    ) -> None:
        self.first_chunk_timeout = first_chunk_timeout
        self.chunk_timeout = chunk_timeout
        http_options = types.HttpOptions(
            base_url=base_url,
            # No hidden retries: the context service decides whether a failed reply is asked
            # again. google-genai retries nothing without retry_options, but its aiohttp
            # transport then retries a refused connection once after 1-10 s; one attempt
            # given explicitly turns that off too.
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        self._client = genai.Client(api_key=api_key, http_options=http_options)

    async def count_tokens(self, model: str, system_prompt: str | None, turns: list[Turn]) -> int:
        contents = [_content(turn) for turn in turns]
        if system_prompt:
            # The Gemini Developer API's countTokens takes no system instruction (google-genai
            # refuses `system_instruction` outside Vertex AI), so the system prompt is counted
            # as a leading user turn: the same text, so about the same tokens.
            contents.insert(0, types.Content(role="user", parts=[types.Part(text=system_prompt)]))
        if not contents:
            return 0
        try:
            async with asyncio.timeout(self.first_chunk_timeout):
                result = await self._client.aio.models.count_tokens(model=model, contents=contents)
        except TimeoutError as exc:
            raise ProviderError(
                "timeout",
                f"The AI provider did not answer within {self.first_chunk_timeout:g} s.",
            ) from exc
        except genai_errors.APIError as exc:
            raise _api_failure(exc) from exc
        except TRANSPORT_ERRORS as exc:
            raise _transport_failure(exc, started=False) from exc
        return result.total_tokens or 0

    async def stream(self, generation: Generation, turns: list[Turn]) -> AsyncIterator[Chunk]:
        config = types.GenerateContentConfig(
            temperature=generation.temperature,
            system_instruction=generation.system_prompt or None,
            # One request per reply: no hidden continuation requests either.
            automatic_continuation=False,
        )
        loop = asyncio.get_running_loop()
        started = False  # a response chunk arrived
        finish: str | None = None
        responses: AsyncIterator[types.GenerateContentResponse] | None = None
        try:
            # The first chunk's time covers connecting, sending and the model's first token
            # (google-genai 3.x sends the request on the first __anext__, older ones on the await).
            first_deadline = loop.time() + self.first_chunk_timeout
            contents = [_content(turn) for turn in turns]
            async with asyncio.timeout_at(first_deadline):
                responses = await self._client.aio.models.generate_content_stream(
                    model=generation.model, contents=contents, config=config
                )
            while True:
                deadline = loop.time() + self.chunk_timeout if started else first_deadline
                try:
                    async with asyncio.timeout_at(deadline):
                        response = await anext(responses)
                except StopAsyncIteration:
                    break
                started = True
                feedback = response.prompt_feedback
                if feedback is not None and feedback.block_reason is not None:
                    reason = getattr(feedback.block_reason, "value", str(feedback.block_reason))
                    raise ProviderError(
                        "blocked", f"The AI provider refused to answer this question ({reason})."
                    )
                text, usage = _text(response), _usage(response.usage_metadata)
                if text or usage is not None:
                    yield Chunk(text, usage)
                finish = _finish_reason(response) or finish
                if finish in BLOCKED_FINISH:
                    raise ProviderError(
                        "blocked",
                        f"The AI provider stopped the reply under its content policy ({finish}).",
                    )
        except TimeoutError as exc:
            if started:
                message = (
                    f"The AI provider sent nothing for {self.chunk_timeout:g} s"
                    " in the middle of the reply."
                )
            else:
                message = (
                    "The AI provider did not start answering"
                    f" within {self.first_chunk_timeout:g} s."
                )
            raise ProviderError("timeout", message) from exc
        except genai_errors.APIError as exc:
            raise _api_failure(exc) from exc
        except genai_errors.UnknownApiResponseError as exc:
            raise ProviderError(
                "server", "The AI provider sent a response that could not be read."
            ) from exc
        except TRANSPORT_ERRORS as exc:
            raise _transport_failure(exc, started=started) from exc
        finally:
            if responses is not None and hasattr(responses, "aclose"):
                await responses.aclose()
        if finish is None:
            raise ProviderError("cut", "The AI provider ended the reply before it was finished.")
        if finish not in NORMAL_FINISH:
            raise ProviderError("cut", f"The AI provider stopped the reply early ({finish}).")

    async def aclose(self) -> None:
        await self._client.aio.aclose()


# --- offline ------------------------------------------------------------------------------


def _estimate_tokens(system_prompt: str | None, turns: list[Turn]) -> int:
    chars = len(system_prompt or "") + sum(len(turn.text) for turn in turns)
    return math.ceil(chars / 4)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class OfflineProvider:
    """Answers without a network, clearly labelled, so the system runs with no API key."""

    name = "offline"
    label = "offline AI"

    def __init__(self, delay: float = 0.03) -> None:
        self.delay = delay

    async def count_tokens(self, model: str, system_prompt: str | None, turns: list[Turn]) -> int:
        return _estimate_tokens(system_prompt, turns)

    def reply(self, generation: Generation, turns: list[Turn]) -> str:
        """The whole reply: the question echoed, and what else came with it."""
        asked = max((i for i, turn in enumerate(turns) if turn.role == "user"), default=None)
        text = turns[asked].text if asked is not None else ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            return f"{OFFLINE_PREFIX}I was given no question to answer."
        # The question is the last line of the last user turn; lines before it (recent room
        # messages, say) came with it as context.
        question = " ".join(lines[-1].split())
        # The window's last line reads "<asker> asks: <question>" (services/context/window.py).
        asker, said, rest = question.partition(" asks: ")
        if said and rest and len(asker) <= 32:
            question = rest
        given = [_count(asked, "earlier turn")]
        if len(lines) > 1:
            given.append(_count(len(lines) - 1, "line") + " of context with the question")
        if generation.system_prompt:
            given.append("a system prompt")
        files = turns[asked].files
        received = ""
        if files:
            noun = "the file" if len(files) == 1 else "the files"
            received = f"I received {noun} {_and([f.described() for f in files])}. "
        return (
            f'{OFFLINE_PREFIX}You asked: "{question}" ({_count(len(question.split()), "word")}). '
            f"{received}I was given {_and(given)}. With an API key, {generation.model} would answer it."
        )

    async def stream(self, generation: Generation, turns: list[Turn]) -> AsyncIterator[Chunk]:
        text = self.reply(generation, turns)
        words = re.findall(r"\S+\s*", text)
        usage = Usage(
            prompt_tokens=_estimate_tokens(generation.system_prompt, turns),
            output_tokens=math.ceil(len(text) / 4),
        )
        for i, word in enumerate(words):
            if i and self.delay:
                await asyncio.sleep(self.delay)
            yield Chunk(word, usage if i == len(words) - 1 else None)

    async def aclose(self) -> None:
        pass
