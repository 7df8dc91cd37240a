"""Who may read and change a user's AI context: the rule in `services/gateway/contexts.py`."""

from __future__ import annotations

import time

import pytest
from fastapi import HTTPException

from services.gateway.contexts import authorize
from services.gateway.identity import sign

SECRET = "a-test-secret-that-is-long-enough-for-hmac"


def refused(user_id: str, authorization: str | None) -> tuple[int, str]:
    with pytest.raises(HTTPException) as caught:
        authorize(user_id, authorization, SECRET)
    return caught.value.status_code, str(caught.value.detail)


def test_a_guests_context_is_open_and_a_users_needs_their_own_token():
    alice = sign("alice", SECRET, ttl=60)
    authorize("guest:bob", None, SECRET)  # guests have no credentials to show
    authorize("alice", f"Bearer {alice}", SECRET)
    assert refused("alice", None)[0] == 401
    assert refused("alice", "Basic abc")[0] == 401
    status, detail = refused("alice", f"Bearer {alice}x")
    assert status == 401 and detail.startswith("Invalid token")
    assert refused("carol", f"Bearer {alice}") == (403, "The token is another user's.")
    expired = sign("alice", SECRET, ttl=60, now=time.time() - 120)
    assert refused("alice", f"Bearer {expired}")[0] == 401


def test_malformed_user_ids_are_named():
    assert refused("guest:", None)[0] == 422
    status, detail = refused("not a valid id", "Bearer x")
    assert status == 422 and detail.startswith("user_id:")
