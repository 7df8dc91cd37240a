"""The checks an upload passes before its bytes are stored: type allow-list, magic bytes,
tus metadata and checksum headers."""

from __future__ import annotations

import base64
import hashlib

import pytest

from services.upload.checks import (
    UnsupportedChecksum,
    UploadRefused,
    check_type,
    encode_metadata,
    parse_checksum,
    parse_metadata,
    sniff,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
PDF = b"%PDF-1.7\n%..."
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 "
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00"


def test_type_allow_list_normalizes_and_refuses_others() -> None:
    assert check_type("image/PNG; charset=x") == "image/png"
    for refused in ("image/gif", "application/x-msdownload", "", "text/plain/x"):
        with pytest.raises(UploadRefused, match="not accepted"):
            check_type(refused)


@pytest.mark.parametrize(
    ("mime", "head"),
    [("image/png", PNG), ("application/pdf", PDF), ("image/webp", WEBP), ("video/mp4", MP4),
     ("audio/flac", b"fLaC\x00\x00"), ("text/plain", "héllo".encode()), ("image/jpeg", b"\xff\xd8\xff\xe0")],
)
def test_sniff_accepts_the_declared_type(mime: str, head: bytes) -> None:
    sniff(mime, head, whole=False)


@pytest.mark.parametrize(
    ("mime", "head"),
    [("image/png", PDF), ("application/pdf", PNG), ("image/webp", b"RIFF\x24\x00\x00\x00WAVEfmt "),
     ("text/plain", b"MZ\x90\x00\x03\x00"), ("video/mp4", PNG), ("image/jpeg", b"GIF89a")],
)
def test_sniff_refuses_bytes_of_another_type(mime: str, head: bytes) -> None:
    with pytest.raises(UploadRefused, match="first bytes"):
        sniff(mime, head, whole=False)


def test_sniff_of_a_short_first_piece_waits_unless_it_is_the_whole_file() -> None:
    sniff("image/png", PNG[:3], whole=False)  # too short to tell yet: passes
    with pytest.raises(UploadRefused):
        sniff("image/png", PNG[:3], whole=True)  # a 3-byte "PNG" is none
    with pytest.raises(UploadRefused):
        sniff("image/png", b"\x89PX", whole=False)  # already wrong


def test_text_cut_inside_a_character_passes() -> None:
    sniff("text/plain", "ab€".encode()[:-1], whole=False)


def test_metadata_round_trip_and_errors() -> None:
    header = f"filename {base64.b64encode('a b/ü.pdf'.encode()).decode()},flag"
    assert parse_metadata(header) == {"filename": "a b/ü.pdf", "flag": ""}
    assert parse_metadata(encode_metadata({"filename": "x", "flag": ""})) == {"filename": "x", "flag": ""}
    for bad, why in [("a Zm9v,a YmFy", "twice"), ("a !!!", "base64"), ("a b c", "malformed"),
                     ("a " + base64.b64encode(b"x" * 5000).decode(), "longer")]:
        with pytest.raises(UploadRefused, match=why):
            parse_metadata(bad)


def test_checksum_header() -> None:
    digest = hashlib.sha1(b"x").digest()
    assert parse_checksum(f"sha1 {base64.b64encode(digest).decode()}") == ("sha1", digest)
    assert parse_checksum(None) is None
    for bad, why in [("md5 AAAA", "not supported"), ("sha1", "algorithm"), ("sha256 !!", "base64"),
                     (f"sha256 {base64.b64encode(digest).decode()}", "wrong length")]:
        with pytest.raises(UnsupportedChecksum, match=why):
            parse_checksum(bad)
