"""The Gemini provider, through the real google-genai client, against a local server speaking
the Gemini REST API (tests/fakes/gemini.py): what it sends, how it streams, and how every way a
call can fail becomes one ProviderError reason with no hidden retry. Then the offline provider.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest

from services.context.provider import (
    OFFLINE_PREFIX,
    Chunk,
    GeminiProvider,
    Generation,
    OfflineProvider,
    ProviderError,
    Turn,
    Usage,
    make_provider,
)
from services.runtime.natsserver import free_port
from tests.fakes.gemini import Block, Cut, Fail, FakeGemini, Held, Reply, Stall

API_KEY = "test-key-123"
MODEL = "gemini-2.5-flash"
FLASH = Generation(model=MODEL, temperature=None, system_prompt=None)
QUESTION = [Turn("user", "What is NATS?")]
PATIENT = 10.0  # seconds: no test that expects a reply waits this long, even on a busy machine
HASTY = 0.3  # seconds: the timeout of the tests that expect one


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


@pytest.fixture
async def gemini(fake: FakeGemini) -> AsyncIterator[GeminiProvider]:
    provider = GeminiProvider(
        API_KEY, fake.base_url, first_chunk_timeout=PATIENT, chunk_timeout=PATIENT
    )
    yield provider
    await provider.aclose()


@asynccontextmanager
async def provider_with(fake: FakeGemini, **timeouts: float) -> AsyncIterator[GeminiProvider]:
    provider = GeminiProvider(API_KEY, fake.base_url, **timeouts)
    try:
        yield provider
    finally:
        await provider.aclose()


async def collect(stream: AsyncIterator[Chunk]) -> tuple[list[Chunk], ProviderError | None]:
    """Every chunk of a stream, and the ProviderError that ended it, if one did."""
    chunks: list[Chunk] = []
    try:
        async for chunk in stream:
            chunks.append(chunk)
    except ProviderError as exc:
        return chunks, exc
    return chunks, None


def texts(chunks: list[Chunk]) -> list[str]:
    return [chunk.text for chunk in chunks if chunk.text]


# --- a reply, and what the server was sent ---------------------------------------------------


async def test_streamed_text_arrives_in_chunks_in_order_with_usage(fake, gemini):
    # The server streams four chunks; the last carries finishReason STOP and the usage.
    fake.script(Reply(["Hello", ", ", "world", "!"], prompt_tokens=7, output_tokens=3))

    chunks, error = await collect(gemini.stream(FLASH, QUESTION))

    # Each arrives as its own chunk, in order, and the last usage figures are the provider's.
    assert error is None
    assert texts(chunks) == ["Hello", ", ", "world", "!"]
    assert chunks[-1].usage == Usage(prompt_tokens=7, output_tokens=3)


async def test_each_chunk_is_handed_on_as_soon_as_it_arrives(fake, gemini):
    # The server holds every chunk until the test lets it go.
    fake.script(Held(["one ", "two ", "three"]))
    stream = gemini.stream(FLASH, QUESTION)

    # Released one at a time, each chunk is read before the next one is even sent.
    words = ["one ", "two ", "three"]
    for n, expected in enumerate(words, start=1):
        fake.release()
        chunk = await anext(stream)
        assert chunk.text == expected
        assert [text for _, text in await fake.wait_emitted_async(n)] == words[:n]

    # The last carried finishReason STOP: the stream ends normally.
    assert await collect(stream) == ([], None)


async def test_the_request_carries_model_turns_system_prompt_temperature_and_key(fake, gemini):
    # A conversation with a system prompt and a temperature.
    turns = [Turn("user", "hi"), Turn("model", "hello!"), Turn("user", "how are you?")]
    generation = Generation(model="gemini-2.5-pro", temperature=0.2, system_prompt="Be brief.")

    chunks, error = await collect(gemini.stream(generation, turns))

    # The server's default reply echoes the question.
    assert error is None
    assert "".join(texts(chunks)) == "Echo: how are you?"
    # It was asked for a server-sent-event stream of the model in the path ...
    [request] = fake.requests
    assert request.kind == "stream" and request.method == "POST"
    assert request.model == "gemini-2.5-pro"
    assert request.path.endswith("/models/gemini-2.5-pro:streamGenerateContent")
    assert request.query == {"alt": "sse"}
    # ... with the turns in order, the system instruction, the temperature and the API key.
    assert request.turns == [("user", "hi"), ("model", "hello!"), ("user", "how are you?")]
    assert request.system_instruction == "Be brief."
    assert request.generation_config == {"temperature": 0.2}
    assert request.headers["x-goog-api-key"] == API_KEY


async def test_unset_temperature_and_system_prompt_are_left_out(fake, gemini):
    await collect(gemini.stream(FLASH, QUESTION))

    # The model's own defaults apply; nothing of the client's own (continuation) is sent.
    [request] = fake.requests
    assert request.system_instruction is None
    assert "temperature" not in request.generation_config
    assert set(request.json) <= {"contents", "generationConfig"}


async def test_count_tokens_counts_the_system_prompt_as_a_leading_turn(fake, gemini):
    turns = [Turn("user", "hi"), Turn("model", "hello!"), Turn("user", "how are you?")]

    tokens = await gemini.count_tokens(MODEL, "Be brief.", turns)

    # The fake counts ceil(len / 4) per text part, the system prompt included.
    parts = ["Be brief.", "hi", "hello!", "how are you?"]
    assert tokens == sum(math.ceil(len(text) / 4) for text in parts)
    [request] = fake.requests
    assert request.kind == "count" and request.model == MODEL
    assert request.path.endswith(f"/models/{MODEL}:countTokens")
    assert request.turns[0] == ("user", "Be brief.")
    assert request.turns[1:] == [(turn.role, turn.text) for turn in turns]


async def test_count_tokens_of_nothing_asks_nothing(fake, gemini):
    assert await gemini.count_tokens(MODEL, None, []) == 0
    assert fake.requests == []


# --- failures: one reason each, no hidden retries ----------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "says"),
    [
        (429, "rate_limited", "rate-limiting requests (HTTP 429)"),
        (500, "server", "server error (HTTP 500 INTERNAL)"),
        (503, "server", "server error (HTTP 503 UNAVAILABLE)"),
        (400, "bad_request", "refused the request (HTTP 400 INVALID_ARGUMENT: Request contains"),
    ],
)
async def test_an_http_error_is_one_reason_and_is_not_retried(fake, gemini, status, reason, says):
    # The first call fails; a good reply waits behind it, which a hidden retry would take.
    fake.script(Fail(status), Reply(["retried"]))

    chunks, error = await collect(gemini.stream(FLASH, QUESTION))

    assert chunks == []
    assert error is not None and error.reason == reason
    assert says in str(error)
    # One request only: the service, not google-genai, decides whether to ask again.
    assert len(fake.requests) == 1 and fake.pending == 1


async def test_resource_exhausted_is_rate_limited_whatever_the_status(fake, gemini):
    fake.script(Fail(403, "Quota exceeded for this project.", "RESOURCE_EXHAUSTED"))

    _, error = await collect(gemini.stream(FLASH, QUESTION))

    assert error is not None and error.reason == "rate_limited"


async def test_a_dropped_connection_is_cut_after_the_chunks_that_came(fake, gemini):
    # Two chunks, then the server drops the connection with no finishReason.
    fake.script(Cut(["The answer ", "is "]))

    chunks, error = await collect(gemini.stream(FLASH, QUESTION))

    assert texts(chunks) == ["The answer ", "is "]
    assert error is not None and error.reason == "cut"


async def test_an_unknown_finish_reason_leaves_the_reply_cut(fake, gemini):
    fake.script(Reply(["Partly"], finish_reason="OTHER"))

    chunks, error = await collect(gemini.stream(FLASH, QUESTION))

    assert texts(chunks) == ["Partly"]
    assert error is not None and error.reason == "cut" and "OTHER" in str(error)


async def test_max_tokens_ends_a_reply_normally(fake, gemini):
    fake.script(Reply(["Long ", "answer"], finish_reason="MAX_TOKENS"))

    chunks, error = await collect(gemini.stream(FLASH, QUESTION))

    assert texts(chunks) == ["Long ", "answer"] and error is None


async def test_a_reply_stopped_by_the_safety_filter_is_blocked_after_its_text(fake, gemini):
    # Some text, then a candidate whose finishReason is SAFETY.
    fake.script(Block(["Well, ", "to make that "], reason="SAFETY"))

    chunks, error = await collect(gemini.stream(FLASH, QUESTION))

    assert texts(chunks) == ["Well, ", "to make that "]
    assert error is not None and error.reason == "blocked" and "SAFETY" in str(error)


async def test_a_blocked_question_is_blocked_with_no_text(fake, gemini):
    # No candidate at all: promptFeedback.blockReason says the question itself was refused.
    fake.script(Block(reason="PROHIBITED_CONTENT"))

    chunks, error = await collect(gemini.stream(FLASH, QUESTION))

    assert texts(chunks) == []
    assert error is not None and error.reason == "blocked"
    assert "PROHIBITED_CONTENT" in str(error)


async def test_a_stall_mid_reply_times_out(fake):
    # One chunk, then nothing for far longer than the chunk timeout.
    fake.script(Stall(["Thinking "], seconds=30))

    async with provider_with(fake, first_chunk_timeout=PATIENT, chunk_timeout=HASTY) as gemini:
        chunks, error = await collect(gemini.stream(FLASH, QUESTION))

    assert texts(chunks) == ["Thinking "]
    assert error is not None and error.reason == "timeout"
    assert "in the middle of the reply" in str(error)


async def test_no_first_chunk_in_time_times_out(fake):
    # The server accepts the call but never lets a chunk go.
    fake.script(Held(["never"]))

    async with provider_with(fake, first_chunk_timeout=HASTY, chunk_timeout=PATIENT) as gemini:
        chunks, error = await collect(gemini.stream(FLASH, QUESTION))

    assert chunks == []
    assert error is not None and error.reason == "timeout"
    assert "did not start answering" in str(error)


async def test_a_server_not_listening_is_a_network_failure():
    provider = GeminiProvider(API_KEY, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        chunks, error = await collect(provider.stream(FLASH, QUESTION))
        assert chunks == []
        assert error is not None and error.reason == "network"
        assert str(error).startswith("Could not reach the AI provider")

        with pytest.raises(ProviderError) as counted:
            await provider.count_tokens(MODEL, None, QUESTION)
        assert counted.value.reason == "network"
    finally:
        await provider.aclose()


async def test_a_reader_that_stops_early_leaves_the_provider_usable(fake, gemini):
    # The reader takes one chunk of a held reply and closes the stream.
    fake.script(Held(["first ", "second"]))
    stream = gemini.stream(FLASH, QUESTION)
    fake.release()
    assert (await anext(stream)).text == "first "
    await stream.aclose()

    # The next reply streams as usual.
    fake.script(Reply(["again"]))
    chunks, error = await collect(gemini.stream(FLASH, QUESTION))
    assert texts(chunks) == ["again"] and error is None


def test_the_fake_speaks_plain_http_to_synchronous_callers(fake):
    # From sync code (as an end-to-end test or a benchmark would): a stream, then an error.
    fake.script(Reply(["a ", "b"]), Fail(429))
    url = f"{fake.base_url}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    with httpx.Client() as client:
        streamed = client.post(url, json=body)
        refused = client.post(url, json=body)

    # Server-sent events, one GenerateContentResponse each, the last with its finish reason.
    assert streamed.headers["content-type"] == "text/event-stream"
    events = [json.loads(line[len("data: "):]) for line in streamed.text.split("\r\n\r\n") if line]
    candidates = [event["candidates"][0] for event in events]
    assert [candidate["content"]["parts"][0]["text"] for candidate in candidates] == ["a ", "b"]
    assert candidates[-1]["finishReason"] == "STOP"
    # Google's error body.
    assert refused.status_code == 429
    assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    # Both recorded; the chunks written, with the time they were written.
    assert [r.kind for r in fake.wait_requests(2, timeout=1)] == ["stream", "stream"]
    assert [text for _, text in fake.wait_emitted(2, timeout=1)] == ["a ", "b"]


# --- choosing a provider; the offline provider ---------------------------------------------------


async def test_make_provider_is_gemini_with_a_key_and_offline_without():
    gemini = make_provider("a-key", "http://127.0.0.1:9")
    assert isinstance(gemini, GeminiProvider)
    assert (gemini.name, gemini.label) == ("gemini", "Gemini")
    await gemini.aclose()
    for key in (None, "", "  "):
        offline = make_provider(key)
        assert isinstance(offline, OfflineProvider)
        assert (offline.name, offline.label) == ("offline", "offline AI")


async def test_the_offline_provider_answers_labelled_word_by_word_and_the_same_every_time():
    provider = OfflineProvider(delay=0)
    # Two earlier turns; the question comes after two recent room messages.
    question = "Room messages:\nbob: hi\ncarol: hey\n\nalice asks: What is a   partition?"
    turns = [Turn("user", "hi"), Turn("model", "hello"), Turn("user", question)]
    generation = Generation(model=MODEL, temperature=0.5, system_prompt="Answer in French.")

    first, error = await collect(provider.stream(generation, turns))
    again, _ = await collect(provider.stream(generation, turns))

    # Labelled as offline, about the question, and says what it was given besides.
    reply = "".join(texts(first))
    assert error is None and reply.startswith(OFFLINE_PREFIX)
    assert '"What is a partition?" (4 words)' in reply  # the asker's name is not echoed
    assert "2 earlier turns, 3 lines of context with the question and a system prompt" in reply
    # Streamed a word (and its space) at a time, the same on every call.
    assert len(first) > 5 and all(len(chunk.text.split()) == 1 for chunk in first)
    assert again == first
    # Usage comes with the last chunk: the prompt estimated as count_tokens does, and the reply.
    prompt_tokens = math.ceil(len("Answer in French." + "hi" + "hello" + question) / 4)
    assert await provider.count_tokens(MODEL, "Answer in French.", turns) == prompt_tokens
    assert first[-1].usage == Usage(prompt_tokens, output_tokens=math.ceil(len(reply) / 4))
    assert all(chunk.usage is None for chunk in first[:-1])


async def test_the_offline_provider_waits_between_words():
    # With a delay, the words come one at a time, at least the delay apart.
    provider = OfflineProvider(delay=0.01)
    loop = asyncio.get_running_loop()
    arrivals = [loop.time() async for _ in provider.stream(FLASH, QUESTION)]

    assert len(arrivals) > 5
    assert all(later - earlier >= 0.009 for earlier, later in itertools.pairwise(arrivals))
