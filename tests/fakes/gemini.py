"""A local HTTP server that speaks the Gemini REST API the way google-genai calls it.

It is a real server on a real TCP port (not a mock object), serving from a background thread
with its own event loop, so a test's loop, synchronous code or another process (the context
service in end-to-end tests, a benchmark) can all talk to it at `base_url`.

Each `POST /<version>/models/<model>:streamGenerateContent?alt=sse` takes the next scripted
step (`Reply`, `Fail`, `Cut`, `Block`, `Stall`, `Held`); with nothing scripted it echoes the
last user turn. `POST /<version>/models/<model>:countTokens` answers ceil(len/4) per text part.
Any `v1...` version is served: google-genai 3.x calls `/v1` by default, `/v1beta` when
GOOGLE_GENAI_API_VERSION=beta.

The Files API too, as google-genai and durachat's upload service use it (`FilesApi`, at
`fake.files`): the X-Goog resumable upload (`start` answers an absolute upload URL; `upload`,
`upload, finalize`, `query`, `cancel`), `GET|DELETE /<version>/files/<id>`, `GET
/<version>/files`, a PROCESSING -> ACTIVE (or FAILED) state machine after a scripted delay,
403 for an unknown or expired file, `fileData` parts accepted in generateContent only for an
ACTIVE file, and scripted failures of upload chunks (`ChunkFail`, `ChunkCut`).

    with FakeGemini() as fake:
        fake.script(Reply(["Hello ", "there"]), Fail(429))
        client = genai.Client(api_key="k", http_options=HttpOptions(base_url=fake.base_url))
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http
import itertools
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, urlsplit

API_PATH = re.compile(r"^/(?P<version>v1[a-z0-9]*)/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$")
METHOD_KINDS = {"streamGenerateContent": "stream", "countTokens": "count"}

# What Google answers for the statuses tests use, when a Fail gives no message of its own.
ERROR_DEFAULTS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    403: ("PERMISSION_DENIED", "Permission denied."),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report it."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
}


# --- scripted steps: each streamGenerateContent call takes the next one ---------------------


@dataclass(frozen=True)
class Reply:
    """Stream `chunks` (`interval` s apart); the last carries `finish_reason` and the usage."""

    chunks: list[str]
    interval: float = 0.0
    finish_reason: str = "STOP"
    prompt_tokens: int | None = None  # None: counted from the request as countTokens would
    output_tokens: int | None = None  # None: ceil(len(reply) / 4)


@dataclass(frozen=True)
class Fail:
    """Answer HTTP `status` with Google's JSON error body, before any streaming."""

    status: int
    message: str | None = None
    status_text: str | None = None  # e.g. RESOURCE_EXHAUSTED; defaults by status


@dataclass(frozen=True)
class Cut:
    """Stream `chunks`, then drop the connection without a finishReason or the end of the body."""

    chunks: list[str]
    interval: float = 0.0


@dataclass(frozen=True)
class Block:
    """Stream `chunks`, then a candidate with finishReason `reason`; with no chunks, answer
    with promptFeedback.blockReason instead (the question itself was blocked)."""

    chunks: list[str] = field(default_factory=list)
    reason: str = "SAFETY"


@dataclass(frozen=True)
class Stall:
    """Stream `chunks`, send nothing for `seconds`, then finish with STOP."""

    chunks: list[str]
    seconds: float


@dataclass(frozen=True)
class Held:
    """Send each chunk only when the test calls `FakeGemini.release()`; the last one finishes."""

    chunks: list[str]


Step = Reply | Fail | Cut | Block | Stall | Held


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # without the query: /v1beta/models/gemini-2.5-flash:streamGenerateContent
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    json: Any
    kind: Literal["stream", "count", "other"]
    model: str | None  # from the path
    at: float  # time.time() when it arrived

    @property
    def turns(self) -> list[tuple[str, str]]:
        """(role, text) of every content sent, in order."""
        contents = (self.json or {}).get("contents", [])
        return [(content.get("role", ""), _content_text(content)) for content in contents]

    @property
    def system_instruction(self) -> str | None:
        instruction = (self.json or {}).get("systemInstruction")
        return None if instruction is None else _content_text(instruction)

    @property
    def generation_config(self) -> dict[str, Any]:
        return (self.json or {}).get("generationConfig", {})


def _content_text(content: dict[str, Any]) -> str:
    return "".join(part.get("text", "") for part in content.get("parts", []))


def count_tokens(body: Any) -> int:
    """What countTokens answers: ceil(len / 4) summed over every text part of the request."""

    def parts(node: Any) -> Iterable[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    yield value
                else:
                    yield from parts(value)
        elif isinstance(node, list):
            for item in node:
                yield from parts(item)

    return sum(math.ceil(len(text) / 4) for text in parts(body))


def echo_reply(body: Any) -> Reply:
    """The default step: "Echo: <the last user turn>", a word per chunk."""
    users = [c for c in (body or {}).get("contents", []) if c.get("role", "user") == "user"]
    question = _content_text(users[-1]) if users else ""
    return Reply(re.findall(r"\S+\s*", f"Echo: {question}"))


class FakeGemini:
    """The fake Gemini API server; a context manager, or `start()` / `stop()`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self.emitted: list[tuple[float, str]] = []
        self._steps: deque[Step] = deque()
        self._changed = threading.Condition()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._permits: asyncio.Semaphore | None = None
        self._connections: set[asyncio.Task] = set()
        self.files = FilesApi(self)

    # --- control, from any thread ----------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Serve on `port` (a free one when 0; after a stop, the same one again)."""
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._run, name="fake-gemini", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake Gemini server did not start within 10 s")
        if self._startup_error is not None or not self.port:
            raise RuntimeError("the fake Gemini server did not start") from self._startup_error
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def script(self, *steps: Step) -> None:
        """Queue steps; each streamGenerateContent call takes the next one."""
        with self._changed:
            self._steps.extend(steps)

    @property
    def pending(self) -> int:
        """Scripted steps no call has taken yet."""
        with self._changed:
            return len(self._steps)

    def release(self, n: int = 1) -> None:
        """Let `n` more chunks of `Held` steps go (releases given early are kept)."""
        assert self._loop is not None and self._permits is not None, "not started"
        permits = self._permits
        self._loop.call_soon_threadsafe(lambda: [permits.release() for _ in range(n)])

    def wait_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least `n` requests have arrived; all of them so far."""
        return self._wait(lambda: self.requests, n, timeout, "requests")

    def wait_emitted(self, n: int, timeout: float = 5.0) -> list[tuple[float, str]]:
        """Block until at least `n` text chunks have been written; all of them so far."""
        return self._wait(lambda: self.emitted, n, timeout, "emitted chunks")

    async def wait_requests_async(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """`wait_requests` without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_requests, n, timeout)

    async def wait_emitted_async(self, n: int, timeout: float = 5.0) -> list[tuple[float, str]]:
        """`wait_emitted` without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_emitted, n, timeout)

    def _wait(self, items, n: int, timeout: float, what: str) -> list:
        with self._changed:
            if not self._changed.wait_for(lambda: len(items()) >= n, timeout):
                raise AssertionError(f"the fake Gemini server saw {len(items())} of {n} {what}")
            return list(items())

    # --- the server, on its own thread and loop --------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except OSError as exc:  # the address is taken, say: start() reports it
            self._startup_error = exc
        finally:
            self._ready.set()  # start() never waits for a server that has stopped
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        self._permits = asyncio.Semaphore(0)
        server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            pass  # stop() ends every connection; finishing quietly keeps asyncio from logging it
        finally:
            self._connections.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; whether the connection stays open."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # closed between requests
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        url = urlsplit(target)
        match = API_PATH.match(url.path)
        kind = METHOD_KINDS.get(match["method"], "other") if match else "other"
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        request = RecordedRequest(
            method=method, path=url.path, query=dict(parse_qsl(url.query)), headers=headers,
            json=payload, kind=kind, model=match["model"] if match else None, at=time.time(),
        )
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()
        keep_open = headers.get("connection", "").lower() != "close"

        if self.files.serves(url.path):
            return await self.files.exchange(writer, request, body) and keep_open
        if kind == "stream" and (refusal := self.files.refuse_file_parts(payload)):
            await self._error(writer, refusal)
            return keep_open
        if method != "POST" or kind == "other":
            await self._error(writer, Fail(404, f"Method not found: {method} {url.path}."))
        elif payload is None:
            await self._error(writer, Fail(400, "Invalid JSON payload received."))
        elif kind == "count":
            await self._json(writer, 200, {"totalTokens": count_tokens(payload)})
        else:
            with self._changed:
                step = self._steps.popleft() if self._steps else echo_reply(payload)
            return await self._stream(writer, step, request) and keep_open
        return keep_open

    async def _json(self, writer: asyncio.StreamWriter, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        phrase = http.HTTPStatus(status).phrase
        writer.write(
            f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json; charset=UTF-8\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode() + data
        )
        await writer.drain()

    async def _error(self, writer: asyncio.StreamWriter, fail: Fail) -> None:
        default_status, default_message = ERROR_DEFAULTS.get(
            fail.status, (http.HTTPStatus(fail.status).name, http.HTTPStatus(fail.status).phrase)
        )
        error = {
            "code": fail.status,
            "message": fail.message or default_message,
            "status": fail.status_text or default_status,
        }
        await self._json(writer, fail.status, {"error": error})

    async def _stream(
        self, writer: asyncio.StreamWriter, step: Step, request: RecordedRequest
    ) -> bool:
        """Answer a streamGenerateContent call with `step`; whether the connection stays open."""
        if isinstance(step, Fail):
            await self._error(writer, step)
            return True
        sse = _SseResponse(self, writer, request)
        await sse.begin()
        match step:
            case Reply(chunks, interval, finish_reason, prompt_tokens, output_tokens):
                if prompt_tokens is not None:
                    sse.prompt_tokens = prompt_tokens
                for i, chunk in enumerate(chunks):
                    if i and interval:
                        await asyncio.sleep(interval)
                    if i == len(chunks) - 1:
                        await sse.text(chunk, finish_reason, output_tokens)
                    else:
                        await sse.text(chunk)
                if not chunks:
                    await sse.text("", finish_reason, output_tokens)
            case Cut(chunks, interval):
                for i, chunk in enumerate(chunks):
                    if i and interval:
                        await asyncio.sleep(interval)
                    await sse.text(chunk)
                writer.transport.abort()  # no finishReason, no end of the chunked body
                return False
            case Block(chunks, reason):
                for chunk in chunks:
                    await sse.text(chunk)
                await sse.block(reason, prompt=not chunks)
            case Stall(chunks, seconds):
                for chunk in chunks:
                    await sse.text(chunk)
                await asyncio.sleep(seconds)
                await sse.text("", "STOP")
            case Held(chunks):
                assert self._permits is not None
                for i, chunk in enumerate(chunks):
                    await self._permits.acquire()
                    await sse.text(chunk, "STOP" if i == len(chunks) - 1 else None)
                if not chunks:
                    await sse.text("", "STOP")
        await sse.end()
        return True

    def _emitted(self, text: str) -> None:
        with self._changed:
            self.emitted.append((time.time(), text))
            self._changed.notify_all()


class _SseResponse:
    """One streamed GenerateContentResponse body: `data: <json>` events in HTTP chunks."""

    def __init__(self, fake: FakeGemini, writer: asyncio.StreamWriter, request: RecordedRequest):
        self.fake = fake
        self.writer = writer
        self.model = request.model or "unknown"
        self.response_id = f"fake-{next(fake._ids)}"
        prompt = request.json or {}
        self.prompt_tokens = count_tokens(
            {key: prompt[key] for key in ("contents", "systemInstruction") if key in prompt}
        )
        self.sent = ""

    async def begin(self) -> None:
        self.writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        await self.writer.drain()

    def usage(self, output_tokens: int | None = None) -> dict[str, int]:
        output = output_tokens if output_tokens is not None else math.ceil(len(self.sent) / 4)
        return {
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": output,
            "totalTokenCount": self.prompt_tokens + output,
        }

    async def text(
        self, text: str, finish: str | None = None, output_tokens: int | None = None
    ) -> None:
        self.sent += text
        content = {"parts": [{"text": text}], "role": "model"}
        candidate: dict[str, Any] = {"content": content, "index": 0}
        if finish is not None:
            candidate["finishReason"] = finish
        await self.event({"candidates": [candidate], "usageMetadata": self.usage(output_tokens)})
        if text:
            self.fake._emitted(text)

    async def block(self, reason: str, *, prompt: bool) -> None:
        rating = {
            "category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True
        }
        if prompt:
            usage = {"promptTokenCount": self.prompt_tokens, "totalTokenCount": self.prompt_tokens}
            await self.event({"promptFeedback": {"blockReason": reason, "safetyRatings": [rating]},
                              "usageMetadata": usage})
        else:
            candidate = {"finishReason": reason, "index": 0, "safetyRatings": [rating]}
            await self.event({"candidates": [candidate], "usageMetadata": self.usage()})

    async def event(self, response: dict[str, Any]) -> None:
        response = {**response, "modelVersion": self.model, "responseId": self.response_id}
        data = f"data: {json.dumps(response)}\r\n\r\n".encode()
        self.writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await self.writer.drain()

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


# --- the Files API ---------------------------------------------------------------------------

FILES_PATH = re.compile(r"^/(?P<version>v1[a-z0-9]*)/files(?:/(?P<id>[^/]+))?$")
UPLOAD_PATH = re.compile(r"^/upload/(?P<version>v1[a-z0-9]*)/files$")
FILE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
FILE_LIFETIME = 48 * 3600.0


@dataclass(frozen=True)
class ChunkFail:
    """Answer the next upload chunk with `status`, storing nothing; with `header` False there
    is no X-Goog-Upload-Status (google-genai retries such a chunk in place)."""

    status: int = 503
    header: bool = False


@dataclass(frozen=True)
class ChunkCut:
    """Drop the connection instead of answering the next upload chunk; with `stored` the
    chunk's bytes were kept (only `query` tells the client)."""

    stored: bool = True


ChunkStep = ChunkFail | ChunkCut


@dataclass
class FakeFile:
    name: str  # files/<id>
    display_name: str
    mime_type: str
    size: int
    sha256: bytes
    created: float
    ready_at: float
    fails: bool = False
    expired: bool = False

    def state(self, now: float) -> str:
        if now < self.ready_at:
            return "PROCESSING"
        return "FAILED" if self.fails else "ACTIVE"

    def resource(self, base_url: str, now: float) -> dict[str, Any]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.created))
        expires = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.created + FILE_LIFETIME))
        body: dict[str, Any] = {
            "name": self.name, "displayName": self.display_name, "mimeType": self.mime_type,
            "sizeBytes": str(self.size), "createTime": f"{stamp}.000000Z",
            "updateTime": f"{stamp}.000000Z", "expirationTime": f"{expires}.000000Z",
            "sha256Hash": base64.b64encode(self.sha256).decode(),
            "uri": f"{base_url}/v1beta/{self.name}", "state": self.state(now), "source": "UPLOADED",
        }
        if body["state"] == "FAILED":
            body["error"] = {"code": 400, "message": "The file could not be processed."}
        return body


@dataclass
class UploadSession:
    id: str
    file: dict[str, Any]  # the start request's {"name", "display_name", "mime_type", ...}
    size: int
    mime_type: str
    data: bytearray = field(default_factory=bytearray)
    status: str = "active"  # active | final | cancelled


class FilesApi:
    """The Files API of a FakeGemini (its state and scripts; served on the fake's thread)."""

    def __init__(self, fake: FakeGemini) -> None:
        self.fake = fake
        self.processing_seconds = 0.3  # PROCESSING this long after the last byte
        self.failing: set[str] = set()  # names whose processing ends FAILED
        self.files: dict[str, FakeFile] = {}
        self.sessions: dict[str, UploadSession] = {}
        self.chunk_steps: deque[ChunkStep] = deque()
        self.lock = threading.Lock()
        self._ids = itertools.count(1)

    # --- control, from tests ------------------------------------------------------------------

    def script_chunks(self, *steps: ChunkStep) -> None:
        with self.lock:
            self.chunk_steps.extend(steps)

    def expire(self, name: str) -> None:
        """Make a file as good as 48 h old: gone (403) from now on."""
        with self.lock:
            self.files[_full(name)].expired = True

    def file(self, name: str) -> FakeFile | None:
        with self.lock:
            return self.files.get(_full(name))

    def uploads_started(self) -> list[RecordedRequest]:
        return [r for r in self.fake.requests
                if UPLOAD_PATH.match(r.path) and r.headers.get("x-goog-upload-command") == "start"]

    # --- serving ------------------------------------------------------------------------------

    def serves(self, path: str) -> bool:
        return bool(FILES_PATH.match(path) or UPLOAD_PATH.match(path))

    def refuse_file_parts(self, payload: Any) -> Fail | None:
        """generateContent takes a fileData part only for an ACTIVE file it knows."""
        now = time.time()
        for content in (payload or {}).get("contents", []):
            for part in content.get("parts", []):
                data = part.get("fileData") or part.get("file_data")
                if data is None:
                    continue
                uri = data.get("fileUri") or data.get("file_uri") or ""
                name = "files/" + uri.rsplit("/files/", 1)[-1]
                with self.lock:
                    found = self.files.get(name)
                if found is None or found.expired:
                    return Fail(403, f"You do not have permission to access the File {name} or it may not exist.")
                if found.state(now) != "ACTIVE":
                    return Fail(400, f"The File {name} is not in an ACTIVE state and usage is not allowed.",
                                "FAILED_PRECONDITION")
        return None

    async def exchange(self, writer: asyncio.StreamWriter, request: RecordedRequest, body: bytes) -> bool:
        files = FILES_PATH.match(request.path)
        if files is not None:
            return await self._resource(writer, request, files["id"])
        if request.query.get("upload_id"):
            return await self._chunk(writer, request, body)
        return await self._start(writer, request)

    async def _resource(self, writer: asyncio.StreamWriter, request: RecordedRequest, file_id: str | None) -> bool:
        now = time.time()
        base = self.fake.base_url
        if file_id is None:
            if request.method != "GET":
                await self.fake._error(writer, Fail(404, "Method not found."))
                return True
            with self.lock:
                listed = [f.resource(base, now) for f in self.files.values() if not f.expired]
            size = int(request.query.get("pageSize", "100"))
            start = int(request.query.get("pageToken") or "0")
            page: dict[str, Any] = {"files": listed[start : start + size]}
            if start + size < len(listed):
                page["nextPageToken"] = str(start + size)
            await self.fake._json(writer, 200, page)
            return True
        name = f"files/{file_id}"
        with self.lock:
            found = self.files.get(name)
            if found is not None and request.method == "DELETE" and not found.expired:
                del self.files[name]
        if found is None or found.expired:
            await self.fake._error(writer, Fail(403, f"You do not have permission to access the File {name} or it may not exist."))
        elif request.method == "GET":
            await self.fake._json(writer, 200, found.resource(base, now))
        elif request.method == "DELETE":
            await self.fake._json(writer, 200, {})
        else:
            await self.fake._error(writer, Fail(404, "Method not found."))
        return True

    async def _start(self, writer: asyncio.StreamWriter, request: RecordedRequest) -> bool:
        headers = request.headers
        if headers.get("x-goog-upload-command") != "start" or headers.get("x-goog-upload-protocol") != "resumable":
            await self.fake._error(writer, Fail(400, "Expected X-Goog-Upload-Protocol: resumable, command start."))
            return True
        if "x-goog-api-key" not in headers:
            await self.fake._error(writer, Fail(403, "Method doesn't allow unregistered callers."))
            return True
        spec = (request.json or {}).get("file", {})
        name = spec.get("name") or f"files/fake{next(self._ids)}"
        if not FILE_NAME.match(name.removeprefix("files/")):
            await self.fake._error(writer, Fail(400, f"Invalid file name {name!r}."))
            return True
        with self.lock:
            taken = name in self.files and not self.files[name].expired
        if taken:
            await self.fake._error(writer, Fail(409, f"File {name} already exists.", "ALREADY_EXISTS"))
            return True
        session = UploadSession(
            id=f"s{next(self._ids)}", file={**spec, "name": name},
            size=int(headers.get("x-goog-upload-header-content-length", "0")),
            mime_type=headers.get("x-goog-upload-header-content-type", "application/octet-stream"),
        )
        with self.lock:
            self.sessions[session.id] = session
        url = f"{self.fake.base_url}{request.path}?upload_id={session.id}&upload_protocol=resumable"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"X-Goog-Upload-URL: {url}\r\nX-Goog-Upload-Status: active\r\n"
              f"X-Goog-Upload-Chunk-Granularity: 262144\r\nContent-Length: 2\r\n\r\n{{}}".encode()
        )
        await writer.drain()
        return True

    async def _status(self, writer: asyncio.StreamWriter, session: UploadSession, body: Any = None) -> None:
        data = json.dumps(body if body is not None else {}).encode()
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Goog-Upload-Status: {session.status}\r\n"
            f"X-Goog-Upload-Size-Received: {len(session.data)}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
        )
        await writer.drain()

    async def _chunk(self, writer: asyncio.StreamWriter, request: RecordedRequest, body: bytes) -> bool:
        with self.lock:
            session = self.sessions.get(request.query["upload_id"])
        if session is None:
            await self.fake._error(writer, Fail(404, "No such upload session."))
            return True
        command = request.headers.get("x-goog-upload-command", "")
        if command == "query":
            await self._status(writer, session)
            return True
        if command == "cancel":
            session.status = "cancelled"
            await self._status(writer, session)
            return True
        if session.status != "active":
            await self.fake._error(writer, Fail(400, f"The upload session is {session.status}."))
            return True
        with self.lock:
            step = self.chunk_steps.popleft() if self.chunk_steps else None
        offset = int(request.headers.get("x-goog-upload-offset", "-1"))
        if isinstance(step, ChunkFail):
            status = http.HTTPStatus(step.status)
            extra = "X-Goog-Upload-Status: active\r\n" if step.header else ""
            writer.write(f"HTTP/1.1 {status.value} {status.phrase}\r\n{extra}Content-Length: 0\r\n\r\n".encode())
            await writer.drain()
            return True
        if offset != len(session.data):
            await self.fake._error(writer, Fail(400, f"Offset {offset} is not the {len(session.data)} bytes received."))
            return True
        session.data += body
        if isinstance(step, ChunkCut):
            if not step.stored:
                del session.data[offset:]
            writer.transport.abort()
            return False
        if "finalize" not in command:
            await self._status(writer, session)
            return True
        if len(session.data) != session.size:
            await self.fake._error(writer, Fail(400, f"Finalized with {len(session.data)} of {session.size} bytes."))
            return True
        now = time.time()
        name = session.file["name"]
        made = FakeFile(
            name=name, display_name=session.file.get("display_name") or session.file.get("displayName") or "",
            mime_type=session.mime_type, size=session.size, sha256=hashlib.sha256(session.data).digest(),
            created=now, ready_at=now + self.processing_seconds, fails=name in self.failing,
        )
        with self.lock:
            self.files[name] = made
        session.status = "final"
        session.data = bytearray(session.data)  # kept for tests (received bytes)
        await self._status(writer, session, {"file": made.resource(self.fake.base_url, now)})
        return True


def _full(name: str) -> str:
    return name if name.startswith("files/") else f"files/{name}"
