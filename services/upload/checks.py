"""The checks an upload passes before its bytes flow, and after its first piece. Pure: no I/O.

- the MIME allow-list: the types Gemini takes (ai.google.dev: images, audio, video, PDF and
  text), so nothing is stored that the AI could not read;
- a magic-byte sniff of the first bytes against the declared type (a `.png` that is really
  an executable is refused before it is stored);
- tus `Upload-Metadata` and `Upload-Checksum` parsing, with errors that say what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable

from contracts.upload import MAX_METADATA

IMAGES = ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif")
AUDIO = (
    "audio/wav", "audio/x-wav", "audio/mp3", "audio/mpeg", "audio/aiff", "audio/x-aiff",
    "audio/aac", "audio/ogg", "audio/flac",
)
VIDEO = (
    "video/mp4", "video/mpeg", "video/mov", "video/quicktime", "video/avi", "video/x-msvideo",
    "video/x-flv", "video/mpg", "video/webm", "video/wmv", "video/x-ms-wmv", "video/3gpp",
)
DOCUMENTS = ("application/pdf",)
TEXT = (
    "text/plain", "text/markdown", "text/csv", "text/html", "text/css", "text/xml",
    "text/javascript", "text/x-python", "application/json",
)
ALLOWED_TYPES = frozenset(IMAGES + AUDIO + VIDEO + DOCUMENTS + TEXT)


class UploadRefused(ValueError):
    """The upload breaks a rule; str() says which, in words for the uploader."""


def normalize_type(mime: str) -> str:
    """`image/PNG; charset=x` -> `image/png`."""
    return mime.split(";", 1)[0].strip().lower()


def check_type(mime: str) -> str:
    """The declared type, normalized, if it is on the allow-list; else UploadRefused."""
    kind = normalize_type(mime)
    if kind not in ALLOWED_TYPES:
        raise UploadRefused(
            f"File type {kind or '(none)'!r} is not accepted; accepted are images "
            "(png, jpeg, webp, heic, heif), audio, video, PDF and plain text."
        )
    return kind


# --- magic bytes ----------------------------------------------------------------------------


def _at(offset: int, signature: bytes) -> Callable[[bytes], bool | None]:
    """True/False when `head` is long enough to tell; None when it is too short yet."""

    def test(head: bytes) -> bool | None:
        part = head[offset : offset + len(signature)]
        if len(part) == len(signature):
            return part == signature
        return None if signature.startswith(part) else False

    return test


def _riff(form: bytes) -> Callable[[bytes], bool | None]:
    riff, fourcc = _at(0, b"RIFF"), _at(8, form)

    def test(head: bytes) -> bool | None:
        first = riff(head)
        return first if not first else fourcc(head)

    return test


def _ftyp(*brands: bytes) -> Callable[[bytes], bool | None]:
    box = _at(4, b"ftyp")

    def test(head: bytes) -> bool | None:
        first = box(head)
        if not first:
            return first
        if not brands:
            return True
        if len(head) < 12:
            return None
        return head[8:12] in brands

    return test


def _any(*tests: Callable[[bytes], bool | None]) -> Callable[[bytes], bool | None]:
    def test(head: bytes) -> bool | None:
        results = [t(head) for t in tests]
        if any(r is True for r in results):
            return True
        return None if any(r is None for r in results) else False

    return test


def _text(head: bytes) -> bool | None:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character cut at the end of the piece is fine
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


_MP3 = _any(_at(0, b"ID3"), _at(0, b"\xff\xfb"), _at(0, b"\xff\xf3"), _at(0, b"\xff\xf2"))
_HEIF = _ftyp(b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif")
_MP4 = _ftyp()
_MPEG = _any(_at(0, b"\x00\x00\x01\xba"), _at(0, b"\x00\x00\x01\xb3"))
_SIGNATURES: dict[str, Callable[[bytes], bool | None]] = {
    "image/png": _at(0, b"\x89PNG\r\n\x1a\n"),
    "image/jpeg": _at(0, b"\xff\xd8\xff"),
    "image/webp": _riff(b"WEBP"),
    "image/heic": _HEIF,
    "image/heif": _HEIF,
    "audio/wav": _riff(b"WAVE"),
    "audio/x-wav": _riff(b"WAVE"),
    "audio/mp3": _MP3,
    "audio/mpeg": _MP3,
    "audio/aiff": _any(_at(8, b"AIFF"), _at(8, b"AIFC")),
    "audio/x-aiff": _any(_at(8, b"AIFF"), _at(8, b"AIFC")),
    "audio/aac": _any(_at(0, b"\xff\xf1"), _at(0, b"\xff\xf9"), _at(0, b"ID3")),
    "audio/ogg": _at(0, b"OggS"),
    "audio/flac": _at(0, b"fLaC"),
    "video/mp4": _MP4,
    "video/mov": _any(_MP4, _at(4, b"moov"), _at(4, b"mdat"), _at(4, b"wide")),
    "video/quicktime": _any(_MP4, _at(4, b"moov"), _at(4, b"mdat"), _at(4, b"wide")),
    "video/3gpp": _MP4,
    "video/mpeg": _MPEG,
    "video/mpg": _MPEG,
    "video/avi": _riff(b"AVI "),
    "video/x-msvideo": _riff(b"AVI "),
    "video/x-flv": _at(0, b"FLV"),
    "video/webm": _at(0, b"\x1a\x45\xdf\xa3"),
    "video/wmv": _at(0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"),
    "video/x-ms-wmv": _at(0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"),
    "application/pdf": _at(0, b"%PDF-"),
}


def sniff(mime: str, head: bytes, whole: bool) -> None:
    """Refuse `head` (the first bytes of a file declared `mime`) when they are not of that
    type. `whole`: `head` is the whole file (a short file may be shorter than a signature).
    Text types must be UTF-8 without NUL bytes."""
    kind = normalize_type(mime)
    test = _SIGNATURES.get(kind, _text if kind in TEXT else None)
    if test is None or not head:
        return
    verdict = test(head)
    if verdict is False or (verdict is None and whole):
        raise UploadRefused(f"The file's first bytes are not those of {kind}: refused.")


# --- tus headers ----------------------------------------------------------------------------

_METADATA_KEY = re.compile(r"^[^\s,]+$")


def parse_metadata(header: str | None) -> dict[str, str]:
    """tus `Upload-Metadata`: `key base64value,key2` (values base64; keys unique, without
    spaces or commas). Values must be UTF-8 text."""
    if not header or not header.strip():
        return {}
    pairs: dict[str, str] = {}
    total = 0
    for item in header.split(","):
        parts = item.strip().split(" ")
        if len(parts) > 2 or not parts[0] or not _METADATA_KEY.match(parts[0]):
            raise UploadRefused(f"Upload-Metadata: malformed pair {item.strip()[:40]!r}.")
        key = parts[0]
        if key in pairs:
            raise UploadRefused(f"Upload-Metadata: key {key!r} is given twice.")
        try:
            value = base64.b64decode(parts[1], validate=True).decode("utf-8") if len(parts) == 2 else ""
        except (binascii.Error, UnicodeDecodeError):
            raise UploadRefused(f"Upload-Metadata: the value of {key!r} is not base64 of UTF-8 text.") from None
        total += len(key) + len(value)
        if total > MAX_METADATA:
            raise UploadRefused(f"Upload-Metadata is longer than {MAX_METADATA} bytes.")
        pairs[key] = value
    return pairs


def encode_metadata(metadata: dict[str, str]) -> str:
    return ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}" if v else k for k, v in metadata.items()
    )


CHECKSUM_ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}


class UnsupportedChecksum(UploadRefused):
    """An `Upload-Checksum` this server cannot check (tus: 400)."""


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    """tus `Upload-Checksum: <algorithm> <base64 digest>`, or None when absent."""
    if header is None:
        return None
    parts = header.strip().split(" ")
    if len(parts) != 2:
        raise UnsupportedChecksum("Upload-Checksum must be '<algorithm> <base64 digest>'.")
    algorithm, encoded = parts
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise UnsupportedChecksum(
            f"Upload-Checksum algorithm {algorithm!r} is not supported (sha1, sha256)."
        )
    try:
        digest = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise UnsupportedChecksum("Upload-Checksum: the digest is not base64.") from None
    if len(digest) != CHECKSUM_ALGORITHMS[algorithm]().digest_size:
        raise UnsupportedChecksum(f"Upload-Checksum: not a {algorithm} digest (wrong length).")
    return algorithm, digest
