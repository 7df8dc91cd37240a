"""Signed user tokens: an optional, verifiable user id bound to a connection.

Anyone may chat anonymously under any name, as in the demo. A client that also presents a
token (`?token=` on the WebSocket URL: browsers cannot set headers there) is bound to the
token's user id, which user context and AI quotas are keyed by. Tokens are minted by
whatever authenticates users in front of durachat, with the shared secret:

    python -m services.gateway.identity mint <user id> [--ttl SECONDS]

Format: `v1.<base64url JSON {"sub": user id, "exp": epoch seconds}>.<base64url HMAC-SHA256>`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import re
import time

PLACEHOLDER_SECRET = "development-only-placeholder-secret"
USER_ID = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class InvalidToken(ValueError):
    """A token that does not verify; str() says why."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: str) -> bytes:
    return hmac.new(secret.encode(), f"v1.{payload}".encode(), hashlib.sha256).digest()


def sign(user_id: str, secret: str, ttl: float = 86_400, now: float | None = None) -> str:
    if not USER_ID.match(user_id):
        raise ValueError("a user id is 1-64 of A-Z a-z 0-9 _ . @ -")
    expires = int((time.time() if now is None else now) + ttl)
    payload = _b64(json.dumps({"sub": user_id, "exp": expires}, separators=(",", ":")).encode())
    return f"v1.{payload}.{_b64(_mac(secret, payload))}"


def verify(token: str, secret: str, now: float | None = None) -> str:
    """The user id a valid token names; raises InvalidToken otherwise."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != "v1":
        raise InvalidToken("not a durachat token")
    _, payload, signature = parts
    try:
        given = _unb64(signature)
        claims = json.loads(_unb64(payload))
    except (ValueError, UnicodeDecodeError):
        raise InvalidToken("malformed token") from None
    if not hmac.compare_digest(given, _mac(secret, payload)):
        raise InvalidToken("bad signature")
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int):
        raise InvalidToken("malformed token")
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not USER_ID.match(user_id):
        raise InvalidToken("malformed token")
    if claims["exp"] <= (time.time() if now is None else now):
        raise InvalidToken("expired")
    return user_id


def main() -> None:
    from services.gateway.settings import GatewaySettings

    parser = argparse.ArgumentParser(description="Mint a durachat user token.")
    sub = parser.add_subparsers(dest="command", required=True)
    mint = sub.add_parser("mint", help="print a token for USER, signed with DURACHAT_TOKEN_SECRET")
    mint.add_argument("user")
    mint.add_argument("--ttl", type=float, default=86_400, help="seconds it is valid (1 day)")
    args = parser.parse_args()
    secret = GatewaySettings().token_secret.get_secret_value()
    print(sign(args.user, secret, args.ttl))


if __name__ == "__main__":
    main()
