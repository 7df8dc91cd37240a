"""HTTP API of the per-user AI contexts: `GET/PUT /api/users/<id>/context`.

A context is read and changed only by its owner: the request must carry that identity's
credential, a user's token or a guest's (the session cookie, or `Authorization: Bearer
<token>`): 401 without one, 403 for another identity's. A context holds its owner's questions
and the rooms they asked in (a private room's id among them), so nobody else sees it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import ValidationError

from contracts.common import ErrorCode, ErrorReply, describe_validation_error
from contracts.context import (
    MAX_USER_ID,
    ContextSettings,
    ContextView,
    GetContext,
    PutSettings,
    user_id_problem,
)
from services.gateway.deps import Gateway
from services.gateway.identity import Identity
from services.gateway.session import Authorization, SessionCookie, caller

router = APIRouter(tags=["context"])

MAX_BODY = 16_384

UserIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_USER_ID,
        description="A user token's subject, or a guest id (`GET /api/session` says yours).",
        examples=["alice", "guest:3nDq0cS1lGm2vPZ0Yq8x9w"],
    ),
]


def authorize(user_id: str, identity: Identity) -> None:
    """Refuse (403) a request whose identity is not the context's owner."""
    if identity.user_id != user_id:
        raise HTTPException(status_code=403, detail="This context is another identity's.")


async def owner(
    user_id: str, gateway: Gateway, authorization: str | None, cookie: str | None
) -> None:
    """422 for a malformed id, 401 without a valid credential, 403 for another identity."""
    if problem := user_id_problem(user_id):
        raise HTTPException(status_code=422, detail=f"user_id: {problem}.")
    authorize(user_id, await caller(gateway, authorization, cookie))


def answer(reply) -> ContextView:
    if isinstance(reply, ErrorReply):
        status = 422 if reply.code == ErrorCode.BAD_REQUEST else 503
        raise HTTPException(status_code=status, detail=reply.message)
    if not isinstance(reply, ContextView):
        raise HTTPException(status_code=503, detail="The context service answered oddly.")
    return reply


@router.get("/api/users/{user_id}/context", response_model=ContextView)
async def get_context(
    user_id: UserIdPath,
    gateway: Gateway,
    authorization: Authorization = None,
    cookie: SessionCookie = None,
) -> ContextView:
    """Your AI settings (unset fields take the service's defaults) and recent exchanges."""
    await owner(user_id, gateway, authorization, cookie)
    return answer(await gateway.contexts.send(user_id, GetContext()))


@router.put(
    "/api/users/{user_id}/context",
    response_model=ContextView,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ContextSettings.model_json_schema()}},
        }
    },
)
async def put_context(
    user_id: UserIdPath,
    request: Request,
    gateway: Gateway,
    authorization: Authorization = None,
    cookie: SessionCookie = None,
) -> ContextView:
    """Replace your AI settings: model, temperature, system prompt, language.
    A field left out goes back to the default."""
    await owner(user_id, gateway, authorization, cookie)
    # The body is read and validated here rather than by FastAPI's form/JSON machinery, so
    # that any body (a form, bytes that are not UTF-8, NaN) gets a 4xx naming the problem.
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(status_code=415, detail="Send the settings as application/json.")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HTTPException(status_code=413, detail=f"The settings are at most {MAX_BODY} bytes.")
    try:
        settings = ContextSettings.model_validate_json(body)
    except ValidationError as exc:
        raise HTTPException(
            status_code=422, detail=f"Invalid settings: {describe_validation_error(exc)}."
        ) from None
    return answer(await gateway.contexts.send(user_id, PutSettings(settings=settings)))
