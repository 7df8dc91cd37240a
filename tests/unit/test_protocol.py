"""Client frames of the chat-demo protocol: what is accepted and the error each refusal names."""

import json

import pytest

from services.gateway.protocol import (
    ANONYMOUS,
    CLOSE_TOO_BIG,
    FrameError,
    parse_message_frame,
    parse_name_frame,
)

LIMIT = 4096


def name(text):
    return parse_name_frame(text, None, LIMIT)


def message(text):
    return parse_message_frame(text, None, LIMIT)


def test_the_name_frame():
    assert name('{"name": "alice"}').name == "alice"
    assert name('{"name": ""}').name == ANONYMOUS
    assert name("{}").name == ANONYMOUS
    assert name(json.dumps({"name": "x" * 32})).name == "x" * 32


def test_an_overlong_name_closes_with_1009():
    with pytest.raises(FrameError) as refused:
        name(json.dumps({"name": "x" * 33}))
    assert str(refused.value) == "Name too long."
    assert refused.value.close_code == CLOSE_TOO_BIG


def test_the_message_frame():
    assert message('{"message": "hi"}').text == "hi"
    assert message(json.dumps({"message": "é" * 256})).text == "é" * 256


@pytest.mark.parametrize(
    "frame, error",
    [
        ("not json", "Frame is not valid JSON."),
        ("[1, 2]", "Frame must be a JSON object."),
        ('"text"', "Frame must be a JSON object."),
        ('{"message": 5}', "message must be a string."),
        ('{"message": null}', "message must be a string."),
        ('{"message": ""}', "Message is empty."),
        ("{}", 'Expected {"message": "..."}.'),
        ('{"message": "hi", "admin": true}', 'Unknown key(s) "admin"; send {"message": "..."}.'),
        (json.dumps({"message": "x" * 257}), "Message too long."),
        ("[" * 3000 + "]" * 3000, "Frame too large: at most 4096 bytes."),
        ("[" * 1500 + "]" * 1500, "Frame is nested too deeply."),
        ("x" * (LIMIT + 1), "Frame too large: at most 4096 bytes."),
    ],
)
def test_bad_message_frames_get_a_clear_error(frame, error):
    with pytest.raises(FrameError) as refused:
        message(frame)
    assert str(refused.value) == error
    assert refused.value.close_code is None


@pytest.mark.parametrize(
    "frame, error",
    [
        ('{"name": 7}', "name must be a string."),
        ('{"nick": "a"}', 'Unknown key(s) "nick"; the first frame is {"name": "..."}.'),
    ],
)
def test_bad_name_frames_get_a_clear_error(frame, error):
    with pytest.raises(FrameError) as refused:
        name(frame)
    assert str(refused.value) == error


def test_binary_frames_are_refused():
    with pytest.raises(FrameError, match="Binary frames are not supported"):
        parse_message_frame(None, b"\x00", LIMIT)


@pytest.mark.parametrize("frame, field", [('{"message": "\\ud800"}', "message"), ('{"name": "a\\udfff"}', "name")])
def test_lone_surrogates_are_not_text(frame, field):
    parse = parse_message_frame if field == "message" else parse_name_frame
    with pytest.raises(FrameError, match=f"{field} must be valid Unicode text."):
        parse(frame, None, LIMIT)


# --- display names: normalized before every check ----------------------------------------------

RESERVED = "The name {!r} is reserved; choose another."
CONTROL = "Names may not contain control characters (newlines, tabs, NUL, ...)."


@pytest.mark.parametrize(
    "given, kept",
    [
        ("  alice  ", "alice"),  # trimmed
        ("ａｌｉｃｅ", "alice"),  # full-width: NFKC
        ("\u200balice\ufeff", "alice"),  # invisible characters at the ends
        ("   ", ANONYMOUS),  # blank is empty, and empty is "anonymous", as in the demo
        ("\u3000", ANONYMOUS),
        ("Al", "Al"),  # a name, not "AI": lower-case L is a different letter
        ("Émilie", "Émilie"),
        ("👩‍💻 dev", "👩‍💻 dev"),  # the zero-width joiner inside an emoji stays
    ],
)
def test_names_are_normalized_and_trimmed(given, kept):
    assert name(json.dumps({"name": given})).name == kept


@pytest.mark.parametrize(
    "given, shown",
    [
        ("AI", "AI"), ("ai", "ai"), ("System", "System"),
        (" AI ", "AI"), ("ＡＩ", "AI"), ("ＳＹＳＴＥＭ", "SYSTEM"),  # trimmed, NFKC
        ("A I", "A I"), ("A.I.", "A.I."), ("a\u200bi", "a\u200bi"), ("AÏ", "AÏ"),
        ("АІ", "АІ"),  # Cyrillic А and І
        ("ΑΙ", "ΑΙ"),  # Greek Alpha and Iota
        ("ᴀɪ", "ᴀɪ"),  # Latin small capitals
        ("ѕуѕтем", "ѕуѕтем"),  # Cyrillic
        ("𝐀𝐈", "AI"),  # mathematical bold: NFKC
    ],
)
def test_the_ai_and_the_system_and_their_look_alikes_are_reserved(given, shown):
    with pytest.raises(FrameError) as refused:
        name(json.dumps({"name": given}))
    assert str(refused.value) == RESERVED.format(shown)
    assert refused.value.close_code is None


@pytest.mark.parametrize("given", ["a\nb", "a\x00", "tab\there", "bell\x07", "a\u0085b", "a\u2028b", "\u202eevil"])
def test_control_characters_in_a_name_are_refused(given):
    with pytest.raises(FrameError) as refused:
        name(json.dumps({"name": given}))
    assert str(refused.value) == CONTROL


def test_a_name_too_long_once_normalized_closes_too():
    # U+FDFA is one character that NFKC spells out in 18: two of them are 36.
    with pytest.raises(FrameError) as refused:
        name(json.dumps({"name": "\ufdfa\ufdfa"}))
    assert refused.value.close_code == CLOSE_TOO_BIG


@pytest.mark.parametrize("text", [" ", "   ", "\t\n", "\u3000", "\u200b", " \u200b "])
def test_a_message_of_only_spaces_is_refused(text):
    with pytest.raises(FrameError) as refused:
        message(json.dumps({"message": text}))
    assert str(refused.value) == "Message is empty: it holds only spaces."


def test_messages_are_not_normalized():
    assert message(json.dumps({"message": " ｆｕｌｌ width "})).text == " ｆｕｌｌ width "


def test_the_room_contract_takes_only_normalized_valid_names():
    from pydantic import ValidationError

    from contracts.room import JoinRoom

    assert JoinRoom(session_id="s", name="alice").name == "alice"
    for bad in (" alice", "ＡＩ", "АІ", "a\nb", ""):
        with pytest.raises(ValidationError):
            JoinRoom(session_id="s", name=bad)
