"""The session: who a browser is, kept in an HttpOnly cookie (`/api/session`).

`POST /api/session` gives a client without a credential a guest identity (a signed JWT, see
services/gateway/identity.py) and keeps a client's own one: with `Authorization: Bearer
<token>` the cookie takes that token (the web client signs in with it once), else a valid
cookie is renewed, else a new guest is issued. The WebSocket and the context API read the
same cookie, so a reload keeps who you are. The cookie is SameSite=Lax: other sites' pages
can neither open sockets nor change settings with it.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Cookie, Header, HTTPException, Request, Response
from pydantic import BaseModel, Field

from services.gateway.deps import Gateway
from services.gateway.identity import (
    SESSION_COOKIE,
    Identities,
    Identity,
    InvalidToken,
    KeysUnavailable,
    bearer,
)

router = APIRouter(tags=["session"])

BEARER = {"WWW-Authenticate": "Bearer"}

Authorization = Annotated[
    str | None, Header(description="`Bearer <JWT>`: a user token, or a guest's token")
]
SessionCookie = Annotated[
    str | None, Cookie(alias=SESSION_COOKIE, description="set by POST /api/session")
]


class Session(BaseModel):
    user_id: str = Field(examples=["guest:3nDq0cS1lGm2vPZ0Yq8x9w", "alice"])
    guest: bool = Field(description="issued by this gateway (true) or a verified user token")
    expires_at: int = Field(description="epoch seconds the credential is valid until")
    token: str = Field(description="the credential (also kept in the HttpOnly cookie); send it "
                       "as `Authorization: Bearer` from clients without cookies")


async def verified(identities: Identities, token: str, what: str) -> Identity:
    """The identity `token` names; 401 naming why it does not verify (503: the identity
    provider's keys are out of reach)."""
    try:
        return await identities.verify_async(token)
    except InvalidToken as exc:
        raise HTTPException(status_code=401, detail=f"Invalid {what}: {exc}.", headers=BEARER) from None
    except KeysUnavailable as exc:
        raise HTTPException(status_code=503, detail=f"{exc}.") from None


async def caller(gateway: Gateway, authorization: str | None, cookie: str | None) -> Identity:
    """Who makes this request: its bearer token, else its session cookie; 401 without one."""
    if authorization is not None:
        token = bearer(authorization)
        if token is None:
            raise HTTPException(
                status_code=401, detail="Authorization must be `Bearer <token>`.", headers=BEARER
            )
        return await verified(gateway.identities, token, "token")
    if cookie:
        return await verified(gateway.identities, cookie, "session cookie")
    raise HTTPException(
        status_code=401,
        detail="This needs your identity: the session cookie (POST /api/session) or "
        "Authorization: Bearer <token>.",
        headers=BEARER,
    )


def keep(response: Response, request: Request, gateway: Gateway, identity: Identity) -> Session:
    assert identity.token is not None and identity.expires_at is not None
    response.set_cookie(
        SESSION_COOKIE,
        identity.token,
        max_age=max(0, identity.expires_at - int(time.time())),
        path="/",
        httponly=True,
        samesite="lax",
        secure=gateway.settings.cookie_secure or request.url.scheme == "https",
    )
    response.headers["Cache-Control"] = "no-store"
    return Session(
        user_id=identity.user_id, guest=identity.guest, expires_at=identity.expires_at,
        token=identity.token,
    )


@router.post("/api/session", response_model=Session)
async def open_session(
    request: Request,
    response: Response,
    gateway: Gateway,
    authorization: Authorization = None,
    cookie: SessionCookie = None,
) -> Session:
    """Your identity, kept in the session cookie: the bearer token's user, else the cookie's
    (a guest's is renewed), else a new guest."""
    identities = gateway.identities
    if authorization is not None:
        return keep(response, request, gateway, await caller(gateway, authorization, None))
    current = None
    if cookie:
        try:
            current = await identities.verify_async(cookie)
        except InvalidToken:
            current = None  # expired, or signed with an old secret: a new guest instead
        except KeysUnavailable as exc:
            raise HTTPException(status_code=503, detail=f"{exc}.") from None
    if current is None:
        current = identities.issue_guest()
    elif current.guest:
        current = identities.issue_guest(current.user_id)  # renewed: a guest lasts while used
    return keep(response, request, gateway, current)


@router.get("/api/session", response_model=Session, responses={401: {"description": "No identity"}})
async def show_session(
    gateway: Gateway, authorization: Authorization = None, cookie: SessionCookie = None
) -> Session:
    """Who the request's credential says you are."""
    identity = await caller(gateway, authorization, cookie)
    assert identity.token is not None and identity.expires_at is not None
    return Session(
        user_id=identity.user_id, guest=identity.guest, expires_at=identity.expires_at,
        token=identity.token,
    )


@router.delete("/api/session", status_code=204)
async def close_session(response: Response) -> Response:
    """Forget the session cookie (a guest's identity is gone with it)."""
    response.status_code = 204
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return response
