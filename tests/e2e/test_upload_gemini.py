"""With Gemini (the fake) behind both the upload and the context service: a finished upload is
handed to the Files API, and `@ai` with it attached reaches Gemini as a `fileData` part with
the Gemini file's URI (the real google-genai client in the context service)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator

import pytest

from services.localsystem import LocalSystem
from tests.conftest import gemini_env, running
from tests.e2e.chat_clients import joined
from tests.e2e.test_upload_attachments import png, upload
from tests.fakes.gemini import FakeGemini
from tests.support import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, gemini: FakeGemini) -> Iterator[LocalSystem]:
    with running(LocalSystem(tmp_path_factory.mktemp("gemini-uploads"), extra_env=gemini_env(gemini))) as local:
        yield local


def gemini_state(system: LocalSystem, upload_id: str) -> str | None:
    if not system.read_db.exists():
        return None
    conn = sqlite3.connect(f"file:{system.read_db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT gemini_state FROM uploads WHERE id = ?", (upload_id,)).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return row[0] if row else None


async def test_a_question_with_an_attachment_reaches_gemini_as_file_data(system: LocalSystem, gemini: FakeGemini) -> None:
    room = f"g-{uuid.uuid4().hex[:8]}"
    data = png(40_000)
    upload_id = upload(system, room, data, name="cat.png")
    await eventually(lambda: gemini_state(system, upload_id) == "ACTIVE", timeout=30,
                     what=lambda: f"the upload's Gemini copy ACTIVE (now {gemini_state(system, upload_id)})")
    (alice,) = await joined(system, room, "alice")
    await alice.send({"message": "@ai what is in this picture?", "attachments": [upload_id]})
    answer = await alice.recv_until(lambda f: f.get("name") == "AI" and "kind" in f, timeout=30)
    assert "what is in this picture?" in answer[-1]["message"]  # the fake echoes the question
    asked = [r for r in gemini.requests if r.kind == "stream" and "what is in this picture?" in str(r.json)]
    parts = asked[-1].json["contents"][-1]["parts"]
    file_parts = [p.get("fileData") or p.get("file_data") for p in parts if "fileData" in p or "file_data" in p]
    assert len(file_parts) == 1
    assert file_parts[0]["file_uri"].endswith(f"/files/dc-{upload_id[:32]}-0")
    assert file_parts[0]["mime_type"] == "image/png"
    await alice.close()


async def test_a_copy_gemini_lost_mid_question_is_made_again_and_the_question_asked_once_more(
    system: LocalSystem, gemini: FakeGemini
) -> None:
    """Gemini answers 403 for a `fileData` part whose copy it no longer has (48 h passed
    sooner than its expiry said): the file is uploaded again from our store and the question
    asked once more, with the new copy."""
    room = f"g-{uuid.uuid4().hex[:8]}"
    upload_id = upload(system, room, png(30_000), name="dog.png")
    await eventually(lambda: gemini_state(system, upload_id) == "ACTIVE", timeout=30,
                     what=lambda: f"the upload's Gemini copy ACTIVE (now {gemini_state(system, upload_id)})")
    first = f"dc-{upload_id[:32]}-0"
    gemini.files.expire(first)
    (alice,) = await joined(system, room, "alice")
    await alice.send({"message": "@ai and this one?", "attachments": [upload_id]})
    answer = await alice.recv_until(lambda f: f.get("name") == "AI" and "kind" in f, timeout=60)
    assert "and this one?" in answer[-1]["message"], answer[-1]
    asked = [r for r in gemini.requests if r.kind == "stream" and "and this one?" in str(r.json)]
    uris = [p["fileData"]["file_uri"] if "fileData" in p else p["file_data"]["file_uri"]
            for r in asked for p in r.json["contents"][-1]["parts"] if "fileData" in p or "file_data" in p]
    assert [u.rsplit("/", 1)[1] for u in uris] == [first, f"dc-{upload_id[:32]}-1"], uris
    await alice.close()
