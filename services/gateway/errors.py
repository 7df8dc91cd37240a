"""The one shape of every HTTP error the gateway answers:

    {"error": {"code": "not_found", "message": "No such room."}}

`code` is a stable word per status (below), `message` a sentence naming what was wrong;
a validation error adds `fields`: each bad parameter's location and problem. Only the chat
demo's own routes (`/api/room`, `/api/room/<name>/websocket`) keep the demo's plain-text
answers, which its client shows as they are.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


class FieldProblem(BaseModel):
    location: str = Field(examples=["query.limit"])
    problem: str = Field(examples=["Input should be less than or equal to 200"])


class ErrorDetail(BaseModel):
    code: str = Field(description="one word per HTTP status", examples=["not_found"])
    message: str = Field(description="what was wrong, for people", examples=["No such room."])
    fields: list[FieldProblem] | None = Field(None, description="each invalid parameter (422 only)")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def error_response(
    status: int, message: str, *, fields: list[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    detail = ErrorDetail(code=CODES.get(status, "error"), message=message, fields=fields)
    return JSONResponse(
        ErrorBody(error=detail).model_dump(exclude_none=True), status_code=status, headers=headers
    )


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else _default(exc.status_code)
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = [FieldProblem(location=_location(e["loc"]), problem=e["msg"]) for e in exc.errors()]
    message = "; ".join(f"{f.location}: {f.problem}" for f in fields) or "Invalid request."
    return error_response(422, message, fields=fields)


def _default(status: int) -> str:
    return {
        404: "Not found.",
        405: "Method not allowed.",
    }.get(status, f"HTTP {status}.")


def install(app: FastAPI) -> None:
    """Answer every HTTPException and validation error of `app` in the one shape."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


def described(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for routes that may answer these error statuses."""
    return {s: {"model": ErrorBody, "description": CODES.get(s, "error")} for s in statuses}
