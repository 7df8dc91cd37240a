"""HTTP API of the per-user AI contexts: `GET/PUT /api/users/<id>/context`.

A verified user's context (`<id>` a token's subject) is read and changed only with that
user's token (`Authorization: Bearer <token>`). Guests (`guest:<name>`, the id of a socket
without a token) have no credentials to show: like their names in the chat, their contexts
are open to anyone.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Request
from pydantic import ValidationError

from contracts.common import ErrorCode, ErrorReply, describe_validation_error
from contracts.context import ContextSettings, ContextView, GetContext, PutSettings
from services.gateway.deps import Gateway
from services.gateway.identity import USER_ID, InvalidToken, verify

router = APIRouter(tags=["context"])

GUEST_PREFIX = "guest:"
MAX_BODY = 16_384

UserIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=160,
        description="A token's user id, or `guest:<name>` for a client without a token.",
        examples=["alice", "guest:bob"],
    ),
]


def authorize(user_id: str, authorization: str | None, secret: str) -> None:
    if user_id.startswith(GUEST_PREFIX):
        if len(user_id) == len(GUEST_PREFIX):
            raise HTTPException(status_code=422, detail="user_id: a guest id is guest:<name>.")
        return
    if not USER_ID.match(user_id):
        raise HTTPException(
            status_code=422, detail="user_id: 1-64 of A-Z a-z 0-9 _ . @ -, or guest:<name>."
        )
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(
            status_code=401,
            detail="This user's context needs their token: Authorization: Bearer <token>.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        subject = verify(token.strip(), secret)
    except InvalidToken as exc:
        raise HTTPException(
            status_code=401, detail=f"Invalid token: {exc}.", headers={"WWW-Authenticate": "Bearer"}
        ) from None
    if subject != user_id:
        raise HTTPException(status_code=403, detail="The token is another user's.")


def answer(reply) -> ContextView:
    if isinstance(reply, ErrorReply):
        status = 422 if reply.code == ErrorCode.BAD_REQUEST else 503
        raise HTTPException(status_code=status, detail=reply.message)
    if not isinstance(reply, ContextView):
        raise HTTPException(status_code=503, detail="The context service answered oddly.")
    return reply


@router.get("/api/users/{user_id}/context", response_model=ContextView)
async def get_context(
    user_id: UserIdPath, gateway: Gateway, authorization: Annotated[str | None, Header()] = None
) -> ContextView:
    """The user's AI settings (unset fields take the service's defaults) and recent exchanges."""
    authorize(user_id, authorization, gateway.settings.token_secret.get_secret_value())
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
    authorization: Annotated[str | None, Header()] = None,
) -> ContextView:
    """Replace the user's AI settings: model, temperature, system prompt, language.
    A field left out goes back to the default."""
    authorize(user_id, authorization, gateway.settings.token_secret.get_secret_value())
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
