"""Our own client of the Gemini Files API's X-Goog resumable upload protocol.

google-genai's `files.upload` cannot resume: a cut connection abandons the session, and it
never sends `query` (research notes, section 2.3). This client speaks the protocol itself so
the upload service can record the upload URL in an event, ask the session how many bytes it
holds after a crash or a cut, and continue from there:

- `start`: `POST {base}/upload/v1beta/files` with `X-Goog-Upload-Protocol: resumable`,
  `X-Goog-Upload-Command: start` and the file's name, type and size; the answer's
  `X-Goog-Upload-URL` (absolute) is the session;
- `upload` / `upload, finalize` chunks at `X-Goog-Upload-Offset`, 8 MiB like the SDK;
- `query`: `X-Goog-Upload-Status` and `X-Goog-Upload-Size-Received`;
- `GET /v1beta/files/<id>` (403 or 404: no such file, or expired).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

CHUNK = 8 * 1024 * 1024
FILE_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"


class GeminiError(Exception):
    """A Files API call failed; `retryable` when trying again may help (a cut, 429, 5xx)."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class SessionGone(GeminiError):
    """The upload session is no more (expired, cancelled, unknown): start a new one."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class GeminiFile:
    name: str
    state: str  # PROCESSING | ACTIVE | FAILED
    uri: str
    mime_type: str
    expiration_time: str | None
    sha256: str | None  # base64
    error: str | None

    @classmethod
    def of(cls, body: dict[str, Any]) -> GeminiFile:
        error = body.get("error")
        return cls(
            name=str(body.get("name", "")),
            state=str(body.get("state", "STATE_UNSPECIFIED")),
            uri=str(body.get("uri", "")),
            mime_type=str(body.get("mimeType", "")),
            expiration_time=body.get("expirationTime"),
            sha256=body.get("sha256Hash"),
            error=error.get("message") if isinstance(error, dict) else None,
        )


def gemini_file_id(upload_id: str, generation: int) -> str:
    """The Gemini file id of an upload's `generation`-th copy: derived, so a hand-off that
    runs twice (a crash, a retry) finds the copy made before instead of making another."""
    file_id = f"dc-{upload_id[:32]}-{generation}"
    assert FILE_ID.match(file_id), file_id
    return file_id


def _failure(what: str, response: httpx.Response) -> GeminiError:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200] or response.reason_phrase
    retryable = response.status_code == 429 or response.status_code >= 500
    return GeminiError(f"{what}: {response.status_code} {message}", retryable)


class GeminiFiles:
    def __init__(self, api_key: str, base_url: str | None = None, timeout: float = 60.0) -> None:
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.http = httpx.AsyncClient(timeout=timeout, headers={"x-goog-api-key": api_key})
        self.api_key = api_key

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, what: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise GeminiError(f"{what}: {type(exc).__name__} {exc}", retryable=True) from exc

    async def get(self, file_id: str) -> GeminiFile | None:
        """The file, or None when Gemini has none by that name (403/404: unknown or expired)."""
        response = await self._send("files.get", "GET", f"{self.base_url}/v1beta/files/{file_id}")
        if response.status_code in (403, 404):
            return None
        if response.status_code != 200:
            raise _failure("files.get", response)
        return GeminiFile.of(response.json())

    async def start(self, file_id: str, display_name: str, mime_type: str, size: int) -> str:
        """Open a resumable upload session; its URL."""
        response = await self._send(
            "start upload", "POST", f"{self.base_url}/upload/v1beta/files",
            headers={
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": str(size),
                "X-Goog-Upload-Header-Content-Type": mime_type,
            },
            json={"file": {"name": f"files/{file_id}", "display_name": display_name[:512],
                           "mime_type": mime_type, "size_bytes": size}},
        )
        url = response.headers.get("x-goog-upload-url")
        if response.status_code != 200 or not url:
            raise _failure("start upload", response)
        return url

    async def query(self, url: str) -> tuple[str, int]:
        """The session's status (active, final, cancelled) and the bytes it holds."""
        response = await self._send(
            "query upload", "POST", url,
            headers={"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "query"},
        )
        status = response.headers.get("x-goog-upload-status")
        if response.status_code in (400, 403, 404, 410) or status == "cancelled":
            raise SessionGone(f"the upload session is gone ({response.status_code} {status})")
        if response.status_code != 200 or status is None:
            raise _failure("query upload", response)
        return status, int(response.headers.get("x-goog-upload-size-received", "0"))

    async def upload(self, url: str, offset: int, data: bytes, final: bool) -> GeminiFile | None:
        """Send one chunk at `offset`; the file once `final` is accepted, else None."""
        command = "upload, finalize" if final else "upload"
        response = await self._send(
            "upload chunk", "POST", url, content=data,
            headers={"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": command,
                     "X-Goog-Upload-Offset": str(offset)},
        )
        status = response.headers.get("x-goog-upload-status")
        if response.status_code != 200 or status is None:
            error = _failure("upload chunk", response)
            error.retryable = error.retryable or status is None  # no status: try it again
            raise error
        if not final:
            if status != "active":
                raise GeminiError(f"upload chunk: the session is {status}", retryable=False)
            return None
        if status != "final":
            raise GeminiError(f"the last chunk left the session {status}", retryable=True)
        return GeminiFile.of(response.json()["file"])
