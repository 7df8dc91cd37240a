"""Who may read and change a user's AI context: the rule in `services/gateway/contexts.py`
(the whole story over HTTP is tests/e2e/test_identity.py)."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from contracts.context import user_id_problem
from services.gateway.contexts import authorize
from services.gateway.identity import Identities, mint

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def test_a_context_is_its_owners_only():
    identities = Identities(SECRET)
    alice = identities.verify(mint("alice", SECRET))
    guest = identities.issue_guest()
    authorize("alice", alice)
    authorize(guest.user_id, guest)
    for user_id, identity in (("alice", guest), (guest.user_id, alice), ("guest:alice", alice)):
        with pytest.raises(HTTPException) as refused:
            authorize(user_id, identity)
        assert (refused.value.status_code, refused.value.detail) == (
            403, "This context is another identity's."
        )


def test_malformed_user_ids_are_named():
    assert user_id_problem("alice") is None
    assert user_id_problem("auth0|5f1c0a") is None  # an identity provider's subject
    assert user_id_problem("guest:" + "A" * 22) is None
    assert user_id_problem("guest:bob") == "a guest id is guest: and 22 of A-Z a-z 0-9 _ -"
    assert user_id_problem("not a valid id").startswith("a user id is 1-128 printable ASCII")
    assert user_id_problem("x" * 129) is not None
