"""Any string can be an object key: its subject token is safe, unique and reversible."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.keys import (
    InvalidKey,
    is_private_room_id,
    key_from_token,
    new_private_room_id,
    subject_token,
)
from contracts.subjects import command_subject

SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def test_plain_names_stay_readable():
    assert subject_token("general") == "general"
    assert subject_token("room-7") == "room-7"


def test_unsafe_characters_are_escaped():
    assert subject_token("a.b") == "a_2Eb"
    assert subject_token("a_b") == "a_5Fb"  # the escape character itself is escaped
    assert subject_token("*>") == "_2A_3E"
    assert command_subject("room", "my room") == "cmd.room.my_20room"


@given(st.text(min_size=1, max_size=64))
def test_every_key_encodes_to_one_safe_token_and_back(key):
    token = subject_token(key)
    assert SAFE_TOKEN.match(token)
    assert key_from_token(token) == key


@given(st.text(min_size=1, max_size=16), st.text(min_size=1, max_size=16))
def test_different_keys_never_share_a_token(a, b):
    if a != b:
        assert subject_token(a) != subject_token(b)


@pytest.mark.parametrize("bad", ["", "a.b", "_2", "_zz", "_FF"])
def test_malformed_tokens_are_refused(bad):
    with pytest.raises(InvalidKey):
        key_from_token(bad)


def test_empty_key_is_refused():
    with pytest.raises(InvalidKey):
        subject_token("")


def test_private_room_ids_are_64_lowercase_hex():
    room = new_private_room_id()
    assert is_private_room_id(room)
    assert room != new_private_room_id()
    assert not is_private_room_id(room.upper())
    assert not is_private_room_id(room[:-1])
