"""Who is on the other end of a socket or a request: an identity the gateway issued or verified.

Every credential is a standard JWT (RFC 7519), verified with PyJWT:

- a **guest** identity is issued by the gateway itself (`POST /api/session`): subject
  `guest:<22 random characters>`, issuer `durachat:guest`, HS256 with DURACHAT_TOKEN_SECRET,
  kept by browsers in an HttpOnly cookie. A client with no credential at all (the demo's
  client) gets a fresh guest id for the socket's lifetime: two people who pick the same
  display name are still two people.
- a **user** token comes from whatever authenticates users in front of durachat: by default
  HS256 with DURACHAT_TOKEN_SECRET (minted for development by
  `python -m services.gateway.identity mint <user>`), or, when DURACHAT_JWT_PUBLIC_KEY or
  DURACHAT_JWT_JWKS_URL is set, signed by the team's identity provider (RS*/PS*, ES*, EdDSA).

Only the algorithms of the configured key are accepted (never `none`; never HS256 with a
public key as its secret). `exp` and `sub` are required, `nbf` is honoured, `iss`/`aud` are
required when configured, and DURACHAT_JWT_LEEWAY seconds of clock skew are allowed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from contracts.context import GUEST_ID, is_guest_id, new_guest_id, user_id_problem

if TYPE_CHECKING:
    from services.gateway.settings import GatewaySettings

PLACEHOLDER_SECRET = "development-only-placeholder-secret"
GUEST_ISSUER = "durachat:guest"
SESSION_COOKIE = "durachat_session"
REQUIRED_CLAIMS = ["exp", "sub"]

RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
PUBLIC_KEY_ALGORITHMS = [*RSA_ALGORITHMS, *EC_ALGORITHMS.values(), "EdDSA"]


class InvalidToken(ValueError):
    """A token that does not verify; str() says why."""


class KeysUnavailable(Exception):
    """The identity provider's keys (its JWKS) could not be fetched: nobody's fault here."""


@dataclass(frozen=True)
class Identity:
    """Who a socket or a request is: a user id the gateway issued (guest) or verified."""

    user_id: str
    guest: bool
    expires_at: int | None = None  # epoch seconds; None: no credential, this socket only
    token: str | None = field(default=None, repr=False)  # the credential it was read from


def public_key_algorithms(key: Any) -> list[str]:
    """The JWS algorithms a public key verifies; only these are accepted with it."""
    if isinstance(key, rsa.RSAPublicKey):
        return list(RSA_ALGORITHMS)
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in EC_ALGORITHMS:
        return [EC_ALGORITHMS[key.curve.name]]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ["EdDSA"]
    raise ValueError(f"unsupported public key type {type(key).__name__}: use RSA, EC P-256/384/521 or Ed25519")


def load_public_key(pem: str) -> Any:
    """A PEM public key (the text, or the path of a file holding it)."""
    try:
        text = pem if "-----BEGIN" in pem else Path(pem).read_text()
    except OSError as exc:
        raise ValueError(f"DURACHAT_JWT_PUBLIC_KEY is neither a PEM key nor a readable file: {exc}") from None
    try:
        return load_pem_public_key(text.encode())
    except ValueError as exc:
        raise ValueError(f"DURACHAT_JWT_PUBLIC_KEY is not a PEM public key: {exc}") from None


class Identities:
    """Issues guest identities and verifies tokens, as the gateway's settings say."""

    def __init__(
        self,
        secret: str,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 30.0,
        public_key: str | None = None,
        jwks_url: str | None = None,
        guest_ttl: float = 30 * 86_400,
    ) -> None:
        public_key, jwks_url = public_key or None, jwks_url or None
        if public_key and jwks_url:
            raise ValueError("set DURACHAT_JWT_PUBLIC_KEY or DURACHAT_JWT_JWKS_URL, not both")
        self.secret = secret
        self.issuer = issuer or None  # empty (an unset compose variable): not checked
        self.audience = audience or None
        self.leeway = leeway
        self.guest_ttl = guest_ttl
        self.jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, timeout=5) if jwks_url else None
        self.user_key: Any = self.secret
        self.user_algorithms = ["HS256"]
        if public_key:
            self.user_key = load_public_key(public_key)
            self.user_algorithms = public_key_algorithms(self.user_key)

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Identities:
        return cls(
            settings.token_secret.get_secret_value(),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway,
            public_key=settings.jwt_public_key,
            jwks_url=settings.jwt_jwks_url,
            guest_ttl=settings.guest_ttl,
        )

    # --- issuing --------------------------------------------------------------------------------

    def issue_guest(self, user_id: str | None = None, now: float | None = None) -> Identity:
        """A signed guest identity (a new random id, or `user_id` renewed)."""
        user_id = user_id or new_guest_id()
        if not GUEST_ID.match(user_id):
            raise ValueError(f"not a guest id: {user_id!r}")
        issued = int(time.time() if now is None else now)
        expires = issued + int(self.guest_ttl)
        claims = {"sub": user_id, "iss": GUEST_ISSUER, "iat": issued, "exp": expires}
        return Identity(user_id, True, expires, jwt.encode(claims, self.secret, "HS256"))

    @staticmethod
    def socket_guest() -> Identity:
        """A guest for one socket's lifetime: a client that shows no credential at all."""
        return Identity(new_guest_id(), True)

    # --- verifying ------------------------------------------------------------------------------

    def verify(self, token: str) -> Identity:
        """The identity a valid token names; raises InvalidToken (or KeysUnavailable)."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token ({exc})") from None
        subject = unverified.get("sub")
        if isinstance(subject, str) and is_guest_id(subject):
            return self._verify_guest(token, header)
        return self._verify_user(token, header)

    async def verify_async(self, token: str) -> Identity:
        """`verify`, off the event loop when a JWKS may have to be fetched."""
        if self.jwks is None:
            return self.verify(token)
        return await asyncio.to_thread(self.verify, token)

    def _verify_guest(self, token: str, header: dict[str, Any]) -> Identity:
        # Only ever our own: HS256 with our secret and our guest issuer, whatever key verifies
        # users (an identity provider cannot issue guest ids).
        allowed(header, ["HS256"])
        claims = self._decode(token, self.secret, ["HS256"], issuer=GUEST_ISSUER, audience=None)
        if not GUEST_ID.match(claims["sub"]):
            raise InvalidToken("malformed guest id")
        return Identity(claims["sub"], True, int(claims["exp"]), token)

    def _verify_user(self, token: str, header: dict[str, Any]) -> Identity:
        key, algorithms = self.user_key, self.user_algorithms
        if self.jwks is not None:
            allowed(header, PUBLIC_KEY_ALGORITHMS)  # before fetching keys for it
            key, algorithms = self._jwks_key(token)
        allowed(header, algorithms)
        claims = self._decode(token, key, algorithms, issuer=self.issuer, audience=self.audience)
        subject = claims["sub"]
        if not isinstance(subject, str) or (problem := user_id_problem(subject)):
            raise InvalidToken(f"bad subject: {problem if isinstance(subject, str) else 'not a string'}")
        return Identity(subject, False, int(claims["exp"]), token)

    def _jwks_key(self, token: str) -> tuple[Any, list[str]]:
        assert self.jwks is not None
        try:
            signing = self.jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise KeysUnavailable(f"the identity provider's keys could not be fetched: {exc}") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"no key of the identity provider verifies it ({exc})") from None
        if signing.key_type == "oct":
            raise InvalidToken("the identity provider's key is symmetric; only public keys are used")
        try:
            algorithms = public_key_algorithms(signing.key)
        except ValueError as exc:
            raise InvalidToken(f"the identity provider's key is not usable: {exc}") from None
        # The key's own `alg` (PyJWT's default for its type when the JWK names none).
        return signing.key, [signing.algorithm_name] if signing.algorithm_name in algorithms else algorithms

    def _decode(
        self, token: str, key: Any, algorithms: list[str], *, issuer: str | None, audience: str | None
    ) -> dict[str, Any]:
        required = REQUIRED_CLAIMS + (["iss"] if issuer else []) + (["aud"] if audience else [])
        try:
            return jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=issuer,
                audience=audience,
                leeway=self.leeway,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("not valid yet (nbf)") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the {exc.claim} claim is missing") from None
        except (jwt.PyJWTError, ValueError) as exc:  # InvalidKeyError for a PEM as HMAC secret
            raise InvalidToken(f"does not verify ({exc})") from None


def allowed(header: dict[str, Any], algorithms: list[str]) -> None:
    """Refuse a token whose algorithm the key does not take, before any verifying: `none`,
    or HS256 where a public key is configured (the key confusion attack)."""
    if header.get("alg") not in algorithms:
        raise InvalidToken(
            f"algorithm {header.get('alg')!r} not allowed (only {', '.join(algorithms)})"
        )


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def mint(
    user_id: str,
    secret: str,
    ttl: float = 86_400,
    *,
    issuer: str | None = None,
    audience: str | None = None,
    private_key: str | None = None,
    algorithm: str | None = None,
    kid: str | None = None,
    now: float | None = None,
) -> str:
    """A user token (JWT) for `user_id`: HS256 with `secret`, or signed with a PEM private key."""
    if is_guest_id(user_id):
        raise ValueError("guest ids are issued by the gateway, not minted")
    if problem := user_id_problem(user_id):
        raise ValueError(problem)
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": user_id, "iat": issued, "exp": int(issued + ttl)}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    headers = {"kid": kid} if kid else None
    if private_key is None:
        return jwt.encode(claims, secret, "HS256", headers=headers)
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(Path(private_key).read_bytes(), password=None)
    alg = algorithm or public_key_algorithms(key.public_key())[0]
    return jwt.encode(claims, key, alg, headers=headers)  # type: ignore[arg-type]


def main() -> None:
    from services.gateway.settings import GatewaySettings

    parser = argparse.ArgumentParser(description="Mint a durachat user token (a JWT), for development.")
    sub = parser.add_subparsers(dest="command", required=True)
    command = sub.add_parser(
        "mint", help="print a token for USER, HS256 with DURACHAT_TOKEN_SECRET (or --private-key)"
    )
    command.add_argument("user")
    command.add_argument("--ttl", type=float, default=86_400, help="seconds it is valid (1 day)")
    command.add_argument("--private-key", help="sign with this PEM private key (RS*/ES*/EdDSA)")
    command.add_argument("--alg", help="the algorithm for --private-key (default: by key type)")
    command.add_argument("--kid", help="the key id header (a JWKS needs it)")
    args = parser.parse_args()
    settings = GatewaySettings()
    if args.private_key is None and (settings.jwt_public_key or settings.jwt_jwks_url):
        print("note: this gateway verifies users with a public key; an HS256 token will be "
              "refused (use --private-key)", file=sys.stderr)
    try:
        token = mint(
            args.user, settings.token_secret.get_secret_value(), args.ttl,
            issuer=settings.jwt_issuer, audience=settings.jwt_audience,
            private_key=args.private_key, algorithm=args.alg, kid=args.kid,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(token)


if __name__ == "__main__":
    main()
