"""User tokens: what verifies, what does not and why; no placeholder secret in production."""

import pytest
from pydantic import ValidationError

from services.gateway.identity import PLACEHOLDER_SECRET, InvalidToken, sign, verify
from services.gateway.settings import GatewaySettings

SECRET = "a-test-secret-of-some-length"


def test_a_signed_token_names_its_user_until_it_expires():
    token = sign("alice@example", SECRET, ttl=60, now=1000)
    assert verify(token, SECRET, now=1059) == "alice@example"
    with pytest.raises(InvalidToken, match="expired"):
        verify(token, SECRET, now=1060)


@pytest.mark.parametrize(
    "mangle, reason",
    [
        (lambda t: t.replace("v1.", "v2.", 1), "not a durachat token"),
        (lambda t: t + ".extra", "not a durachat token"),
        (lambda t: t[:-3] + ("AAA" if not t.endswith("AAA") else "BBB"), "bad signature"),
        (lambda t: "v1." + "e30" + "." + t.split(".")[2], "bad signature"),
        (lambda t: "v1.%%%.***", "malformed token"),
        (lambda t: "", "not a durachat token"),
    ],
)
def test_a_tampered_or_malformed_token_is_refused(mangle, reason):
    token = sign("alice", SECRET, ttl=60)
    with pytest.raises(InvalidToken, match=reason):
        verify(mangle(token), SECRET)


def test_another_secret_does_not_verify():
    with pytest.raises(InvalidToken, match="bad signature"):
        verify(sign("alice", SECRET), "another-secret-entirely")


def test_user_ids_are_plain():
    with pytest.raises(ValueError):
        sign("alice bob", SECRET)


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
