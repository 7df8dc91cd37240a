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
