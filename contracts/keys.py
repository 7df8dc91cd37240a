"""Object keys and their subject-safe form.

A NATS subject token may not contain '.', '*', '>' or whitespace, and JetStream KV keys are
stricter still. Every object key (a room name, a user id, an IP address) goes through
`subject_token` before it is put into a subject, so any string can be an object key.
"""

from __future__ import annotations

import re
import secrets

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_ESCAPE = ord("_")
_TOKEN = re.compile(r"^(?:[A-Za-z0-9-]|_[0-9A-F]{2})+$")
PRIVATE_ROOM_ID = re.compile(r"^[0-9a-f]{64}$")


class InvalidKey(ValueError):
    """The key cannot address an object (empty, or a token that no key encodes to)."""


def subject_token(key: str) -> str:
    """Encode any non-empty key as one subject token, injectively and reversibly.

    ASCII letters, digits and '-' stay as they are; every other UTF-8 byte, '_' included,
    becomes '_XX' (upper-case hex), so 'general' stays 'general' and 'a.b' becomes 'a_2Eb'.
    """
    if not key:
        raise InvalidKey("an object key must not be empty")
    raw = key.encode("utf-8")
    if all(b in _SAFE for b in raw):
        return key
    return "".join(chr(b) if b in _SAFE else f"_{b:02X}" for b in raw)


def key_from_token(token: str) -> str:
    """Invert `subject_token`."""
    if not _TOKEN.match(token):
        raise InvalidKey(f"not an encoded object key: {token!r}")
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "_":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidKey(f"not an encoded object key: {token!r}") from exc


def new_private_room_id() -> str:
    """A new private room id: 256 random bits as 64 lowercase hex, as `newUniqueId()` gives."""
    return secrets.token_hex(32)


def is_private_room_id(name: str) -> bool:
    return bool(PRIVATE_ROOM_ID.match(name))
