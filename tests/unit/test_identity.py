"""Identities: guest JWTs the gateway issues, user JWTs it verifies (its secret, a PEM public
key or a JWKS served over real HTTP), and every way a token must fail, each saying why."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from services.gateway.identity import (
    GUEST_ISSUER,
    PLACEHOLDER_SECRET,
    Identities,
    InvalidToken,
    KeysUnavailable,
    bearer,
    mint,
)
from services.gateway.settings import GatewaySettings
from tests.support import JwksServer

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def claims(sub: str = "alice", ttl: float = 60, **extra) -> dict:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + ttl, **extra}


def refused(identities: Identities, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        identities.verify(token)
    return str(caught.value)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict, payload: dict, key: bytes | None) -> str:
    """A JWT built by hand, as an attacker would: HMAC-SHA256 with `key`, or unsigned."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if key is None:
        return signing_input + "."
    return f"{signing_input}.{b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


def pem(public_key) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# --- the default: HS256 with the gateway's secret ---------------------------------------------


def test_a_minted_token_names_its_user_and_a_guest_token_its_guest():
    identities = Identities(SECRET)
    user = identities.verify(mint("alice@example", SECRET))
    assert (user.user_id, user.guest) == ("alice@example", False)
    # A guest: a random id, signed; verified, it is the same guest (a reload keeps it).
    guest = identities.issue_guest()
    assert guest.user_id.startswith("guest:") and guest.guest and guest.token
    assert identities.verify(guest.token).user_id == guest.user_id
    assert identities.issue_guest().user_id != guest.user_id  # two guests are two people


@pytest.mark.parametrize(
    "payload, reason",
    [  # built when the test runs: collection may be minutes before
        (lambda: claims(ttl=-120), "expired"),
        (lambda: claims(nbf=int(time.time()) + 120), "not valid yet (nbf)"),
        (lambda: {"sub": "alice"}, "the exp claim is missing"),
        (lambda: {"exp": int(time.time()) + 60}, "the sub claim is missing"),
        (lambda: claims(sub="has space"), "bad subject: a user id is 1-128 printable ASCII"),
        (lambda: claims(sub=42), "does not verify"),
    ],
)
def test_claims_that_do_not_hold_are_refused(payload, reason):
    token = jwt.encode(payload(), SECRET, "HS256")
    assert refused(Identities(SECRET), token).startswith(reason)


def test_clock_skew_within_the_leeway_is_tolerated():
    identities = Identities(SECRET, leeway=30)
    assert identities.verify(jwt.encode(claims(ttl=-10), SECRET, "HS256")).user_id == "alice"
    nbf = int(time.time()) + 10
    assert identities.verify(jwt.encode(claims(nbf=nbf), SECRET, "HS256")).user_id == "alice"
    assert refused(Identities(SECRET, leeway=0), jwt.encode(claims(ttl=-10), SECRET, "HS256")) == "expired"


def test_another_secret_or_a_tampered_token_is_a_bad_signature():
    identities = Identities(SECRET)
    assert refused(identities, mint("alice", "another-secret-entirely-of-length")) == "bad signature"
    head, body, signature = mint("alice", SECRET).split(".")
    forged = b64(json.dumps(claims(sub="mallory")).encode())
    assert refused(identities, f"{head}.{forged}.{signature}") == "bad signature"
    assert refused(identities, "garbage").startswith("malformed token")
    assert refused(identities, "").startswith("malformed token")


def test_issuer_and_audience_are_required_when_configured():
    identities = Identities(SECRET, issuer="https://id.example", audience="durachat")
    good = mint("alice", SECRET, issuer="https://id.example", audience="durachat")
    assert identities.verify(good).user_id == "alice"
    assert refused(identities, mint("alice", SECRET, issuer="https://evil.example", audience="durachat")) == "wrong issuer"
    assert refused(identities, mint("alice", SECRET, issuer="https://id.example", audience="other")) == "wrong audience"
    assert refused(identities, mint("alice", SECRET, audience="durachat")) == "the iss claim is missing"
    assert refused(identities, mint("alice", SECRET, issuer="https://id.example")) == "the aud claim is missing"


def test_alg_none_is_refused_for_users_and_guests():
    identities = Identities(SECRET)
    unsigned = hand_signed({"alg": "none", "typ": "JWT"}, claims(), None)
    assert refused(identities, unsigned) == "algorithm 'none' not allowed (only HS256)"
    guest = hand_signed({"alg": "none"}, claims(sub="guest:" + "A" * 22, iss=GUEST_ISSUER), None)
    assert refused(identities, guest).startswith("algorithm 'none' not allowed")


def test_guest_ids_are_only_ever_the_gateways_own(rsa_key):
    identities = Identities(SECRET, public_key=pem(rsa_key.public_key()))
    # An identity provider (or anyone with its key) cannot hand out a guest's id...
    as_guest = jwt.encode(claims(sub="guest:" + "A" * 22, iss=GUEST_ISSUER), rsa_key, "RS256")
    assert refused(identities, as_guest).startswith("algorithm 'RS256' not allowed (only HS256)")
    # ...a guest token needs the guest issuer, and the mint command refuses guest ids.
    no_issuer = jwt.encode(claims(sub="guest:" + "A" * 22), SECRET, "HS256")
    assert refused(identities, no_issuer) == "the iss claim is missing"
    with pytest.raises(ValueError, match="guest ids are issued by the gateway"):
        mint("guest:someone", SECRET)
    # A guest's token keeps verifying with the secret when users come from the provider.
    guest = identities.issue_guest()
    assert identities.verify(guest.token or "").user_id == guest.user_id


# --- a team's identity provider: a PEM public key, or a JWKS ----------------------------------


def test_a_pem_public_key_verifies_rs256_and_es256_and_only_its_own_algorithms(rsa_key):
    identities = Identities(SECRET, public_key=pem(rsa_key.public_key()))
    assert identities.verify(jwt.encode(claims(), rsa_key, "RS256")).user_id == "alice"
    assert identities.verify(jwt.encode(claims(), rsa_key, "PS256")).user_id == "alice"
    # With a public key configured, the gateway's HS256 user tokens no longer count.
    assert refused(identities, mint("alice", SECRET)).startswith("algorithm 'HS256' not allowed")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert refused(identities, jwt.encode(claims(), other, "RS256")) == "bad signature"

    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_identities = Identities(SECRET, public_key=pem(ec_key.public_key()))
    assert ec_identities.verify(jwt.encode(claims(), ec_key, "ES256")).user_id == "alice"
    assert refused(ec_identities, jwt.encode(claims(), rsa_key, "RS256")).startswith(
        "algorithm 'RS256' not allowed (only ES256)"
    )


def test_key_confusion_an_hs256_token_signed_with_the_public_pem_is_refused(rsa_key):
    public_pem = pem(rsa_key.public_key())
    identities = Identities(SECRET, public_key=public_pem)
    # The classic attack: the public key (public!) used as the HMAC secret.
    forged = hand_signed({"alg": "HS256", "typ": "JWT"}, claims(sub="admin"), public_pem.encode())
    assert refused(identities, forged) == "algorithm 'HS256' not allowed (only RS256, RS384, RS512, PS256, PS384, PS512)"


def jwk(public_key, kid: str, **extra) -> dict:
    return {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public_key)), "kid": kid, "use": "sig", **extra}


@pytest.fixture
def jwks_server(rsa_key) -> Iterator[JwksServer]:
    with JwksServer({"keys": [jwk(rsa_key.public_key(), "key-1", alg="RS256")]}) as server:
        yield server


def test_a_jwks_verifies_by_kid_over_http(rsa_key, jwks_server):
    identities = Identities(SECRET, jwks_url=jwks_server.url, issuer="https://id.example")
    token = jwt.encode(claims(iss="https://id.example"), rsa_key, "RS256", headers={"kid": "key-1"})
    assert identities.verify(token).user_id == "alice"
    assert identities.verify(token).user_id == "alice"
    assert jwks_server.fetches == 1  # the keys are cached between tokens
    # The key's declared alg is the only one taken; another key under its kid does not verify.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert refused(identities, jwt.encode(
        claims(iss="https://id.example"), other, "RS256", headers={"kid": "key-1"}
    )) == "bad signature"
    assert refused(identities, jwt.encode(
        claims(iss="https://id.example"), rsa_key, "PS256", headers={"kid": "key-1"}
    )).startswith("algorithm 'PS256' not allowed (only RS256)")
    assert refused(identities, jwt.encode(
        claims(iss="https://id.example"), rsa_key, "RS256", headers={"kid": "key-9"}
    )).startswith("no key of the identity provider verifies it")
    # HS256 signed with the JWK's public material is key confusion again.
    forged = hand_signed({"alg": "HS256", "kid": "key-1"}, claims(iss="https://id.example"), pem(rsa_key.public_key()).encode())
    assert refused(identities, forged).startswith("algorithm 'HS256' not allowed")


def test_a_symmetric_key_in_a_jwks_is_never_used():
    secret_jwk = {"kty": "oct", "kid": "k", "k": b64(SECRET.encode()), "alg": "HS256"}
    with JwksServer({"keys": [secret_jwk]}) as server:
        identities = Identities(SECRET, jwks_url=server.url)
        hs256 = jwt.encode(claims(), SECRET, "HS256", headers={"kid": "k"})
        assert refused(identities, hs256).startswith("algorithm 'HS256' not allowed (only RS256")
        # A token claiming an asymmetric algorithm still never gets the secret key.
        claimed = hand_signed({"alg": "RS256", "kid": "k"}, claims(), SECRET.encode())
        assert refused(identities, claimed).startswith("the identity provider's key is symmetric")


def test_an_unreachable_jwks_is_unavailable_not_invalid(rsa_key):
    with JwksServer({"keys": []}) as server:
        url = server.url
    identities = Identities(SECRET, jwks_url=url)  # the server is gone
    token = jwt.encode(claims(), rsa_key, "RS256", headers={"kid": "key-1"})
    with pytest.raises(KeysUnavailable, match="could not be fetched"):
        identities.verify(token)


def test_the_mint_command_signs_with_a_private_key_for_a_pem_or_jwks_setup(rsa_key, tmp_path):
    key_file = tmp_path / "idp-private.pem"
    key_file.write_bytes(rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    token = mint("alice", SECRET, private_key=str(key_file), kid="k1", issuer="https://id.example")
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": "k1", "typ": "JWT"}
    identities = Identities(SECRET, public_key=pem(rsa_key.public_key()), issuer="https://id.example")
    assert identities.verify(token).user_id == "alice"


# --- settings and small parts ------------------------------------------------------------------


def test_bearer_takes_only_the_bearer_scheme():
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer") is None
    assert bearer(None) is None


def test_production_refuses_the_placeholder_or_a_short_secret(monkeypatch):
    monkeypatch.setenv("DURACHAT_ENV", "production")
    for secret in (PLACEHOLDER_SECRET, "short"):
        monkeypatch.setenv("DURACHAT_TOKEN_SECRET", secret)
        with pytest.raises(ValidationError, match="DURACHAT_TOKEN_SECRET must be set"):
            GatewaySettings()
    monkeypatch.setenv("DURACHAT_TOKEN_SECRET", SECRET)
    assert GatewaySettings().token_secret.get_secret_value() == SECRET
    monkeypatch.setenv("DURACHAT_ENV", "development")
    monkeypatch.delenv("DURACHAT_TOKEN_SECRET")
    assert GatewaySettings().token_secret.get_secret_value() == PLACEHOLDER_SECRET


def test_key_settings_are_checked_at_start(monkeypatch, rsa_key, tmp_path):
    monkeypatch.setenv("DURACHAT_JWT_PUBLIC_KEY", "not a key")
    with pytest.raises(ValidationError):
        GatewaySettings()
    key_file = tmp_path / "idp.pem"
    key_file.write_text(pem(rsa_key.public_key()))
    monkeypatch.setenv("DURACHAT_JWT_PUBLIC_KEY", str(key_file))  # a path works too
    assert GatewaySettings().jwt_public_key == str(key_file)
    monkeypatch.setenv("DURACHAT_JWT_JWKS_URL", "http://127.0.0.1:1/jwks.json")
    with pytest.raises(ValidationError, match="not both"):
        GatewaySettings()
