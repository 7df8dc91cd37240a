"""The fake Gemini's Files API, driven by the real google-genai client: what google-genai
sends is what the fake (and so durachat's own X-Goog client, tested against it) takes."""

from __future__ import annotations

import io
import os
import time

import pytest
from google import genai
from google.genai import errors, types

from tests.fakes.gemini import ChunkFail, FakeGemini


@pytest.fixture
def client(gemini: FakeGemini) -> genai.Client:
    options = types.HttpOptions(base_url=gemini.base_url, retry_options=types.HttpRetryOptions(attempts=1))
    return genai.Client(api_key="test-key", http_options=options)


def test_upload_get_list_delete_with_google_genai(gemini: FakeGemini, client: genai.Client) -> None:
    data = os.urandom(8 * 1024 * 1024 + 5)  # two chunks as the SDK sends them
    made = client.files.upload(file=io.BytesIO(data), config=types.UploadFileConfig(
        name="files/dc-sdk-test", mime_type="application/pdf", display_name="r.pdf"))
    assert made.name == "files/dc-sdk-test" and made.state == types.FileState.PROCESSING
    assert made.size_bytes == len(data) and made.uri and made.uri.startswith(gemini.base_url)
    chunks = [r for r in gemini.requests if r.query.get("upload_id")]
    assert [r.headers["x-goog-upload-command"] for r in chunks][-2:] == ["upload", "upload, finalize"]
    assert all("x-goog-api-key" not in r.headers for r in chunks)  # the URL is the capability
    deadline = time.time() + 5
    while client.files.get(name="files/dc-sdk-test").state != types.FileState.ACTIVE:
        assert time.time() < deadline
        time.sleep(0.05)
    assert "files/dc-sdk-test" in [f.name for f in client.files.list()]
    client.files.delete(name="files/dc-sdk-test")
    with pytest.raises(errors.ClientError) as gone:
        client.files.get(name="files/dc-sdk-test")
    assert gone.value.code == 403


def test_file_data_parts_need_an_active_file(gemini: FakeGemini, client: genai.Client) -> None:
    gemini.files.processing_seconds = 60
    try:
        made = client.files.upload(file=io.BytesIO(b"%PDF-1.4 x"), config=types.UploadFileConfig(
            name="files/dc-processing", mime_type="application/pdf"))
    finally:
        gemini.files.processing_seconds = 0.3
    part = types.Part.from_uri(file_uri=made.uri, mime_type="application/pdf")
    with pytest.raises(errors.ClientError) as early:
        list(client.models.generate_content_stream(model="gemini-2.5-flash", contents=[part, "what is it?"]))
    assert early.value.code == 400 and "ACTIVE" in str(early.value)
    gemini.files.files["files/dc-processing"].ready_at = 0  # processed now
    text = "".join(c.text or "" for c in client.models.generate_content_stream(
        model="gemini-2.5-flash", contents=[part, "what is it?"]))
    assert "what is it?" in text
    sent = gemini.requests[-1].json["contents"][0]["parts"][0]
    assert (sent.get("fileData") or sent.get("file_data"))["file_uri"] == made.uri
    gemini.files.expire("dc-processing")
    with pytest.raises(errors.ClientError) as expired:
        list(client.models.generate_content_stream(model="gemini-2.5-flash", contents=[part, "again?"]))
    assert expired.value.code == 403


def test_a_chunk_refused_without_a_status_header_is_retried_by_the_sdk(gemini: FakeGemini, client: genai.Client) -> None:
    gemini.files.script_chunks(ChunkFail(503))
    made = client.files.upload(file=io.BytesIO(b"hello"), config=types.UploadFileConfig(
        name="files/dc-retried", mime_type="text/plain"))
    assert made.size_bytes == 5
