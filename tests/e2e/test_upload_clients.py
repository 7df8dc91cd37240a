"""Third-party tus 1.0 clients work unchanged against `/api/uploads`: tuspy (the tus project's
Python client), with its checksum option and its URL storage resuming an upload after the
process that started it went away; and tus-js-client (what Uppy uses) under Node, from npm
outside the repo (`.ci/run` installs it), stopped after a chunk and resumed by URL."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tusclient import client as tus_client
from tusclient.storage.filestorage import FileStorage

from contracts.upload import PIECE_SIZE
from services.localsystem import LocalSystem
from tests.conftest import running

pytestmark = pytest.mark.e2e

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    with running(LocalSystem(tmp_path_factory.mktemp("tus-clients"))) as local:
        yield local


def png(size: int) -> bytes:
    return PNG + os.urandom(size - len(PNG))


def read_back(system: LocalSystem, url: str) -> bytes:
    response = httpx.get(url if url.startswith("http") else system.base_url + url, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def test_tuspy_uploads_in_chunks_with_sha1_checksums(system: LocalSystem) -> None:
    data = png(2 * PIECE_SIZE + 777)
    client = tus_client.TusClient(system.base_url + "/api/uploads")
    uploader = client.uploader(
        file_stream=io.BytesIO(data), chunk_size=PIECE_SIZE // 2 + 1,
        metadata={"filename": "photo.png", "filetype": "image/png"}, upload_checksum=True,
    )
    uploader.upload()
    assert uploader.offset == len(data)
    assert read_back(system, uploader.url) == data
    head = httpx.head(uploader.url, headers={"Tus-Resumable": "1.0.0"})
    assert head.headers["upload-offset"] == str(len(data))
    assert head.headers["upload-length"] == str(len(data))


def test_tuspy_resumes_from_its_stored_url_in_a_new_process(system: LocalSystem, tmp_path: Path) -> None:
    """The first client stops half-way (as an app that is closed); a second one, with the same
    URL storage and file, asks the server where it stopped and sends only the rest."""
    data = png(3 * PIECE_SIZE)
    path = tmp_path / "clip.png"
    path.write_bytes(data)
    storage = tmp_path / "tus-urls.json"

    def uploader():
        client = tus_client.TusClient(system.base_url + "/api/uploads")
        return client.uploader(
            file_path=str(path), chunk_size=PIECE_SIZE, store_url=True,
            url_storage=FileStorage(str(storage)), metadata={"filename": "clip.png", "filetype": "image/png"},
        )

    first = uploader()
    first.upload(stop_at=PIECE_SIZE)
    assert first.offset == PIECE_SIZE
    url = first.url
    del first

    second = uploader()
    assert second.url == url  # found in its storage, not created again
    assert second.offset == PIECE_SIZE  # the server's Upload-Offset, from HEAD
    sent: list[int] = []
    while second.offset < len(data):
        sent.append(second.offset)
        second.upload_chunk()
    assert sent == [PIECE_SIZE, 2 * PIECE_SIZE]
    got = read_back(system, url)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


TUS_JS = Path(os.environ.get("DURACHAT_TUS_JS_DIR", Path.home() / ".cache/durachat/tusjs")) / "node_modules"
TUS_JS_SCRIPT = Path(__file__).parent / "clients" / "tus_js_upload.js"


@pytest.mark.skipif(
    shutil.which("node") is None or not (TUS_JS / "tus-js-client").is_dir(),
    reason="tus-js-client (npm, installed outside the repo: `npm install --prefix "
           "~/.cache/durachat/tusjs tus-js-client@4.3.1`, as .ci/run does; or DURACHAT_TUS_JS_DIR) "
           "or node is not here",
)
def test_tus_js_client_uploads_and_resumes_by_url(system: LocalSystem, tmp_path: Path) -> None:
    """tus-js-client (what Uppy uses) in Node: stopped after its first chunk, then resumed by a
    second upload given the first one's URL, which asks the server's offset with HEAD."""
    data = png(2 * PIECE_SIZE + 5)
    path = tmp_path / "clip.png"
    path.write_bytes(data)
    done = subprocess.run(
        ["node", str(TUS_JS_SCRIPT), system.base_url + "/api/uploads", str(path), str(PIECE_SIZE)],
        env={**os.environ, "NODE_PATH": str(TUS_JS)}, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["first"]["ended"] == [PIECE_SIZE]
    assert report["second"]["url"] == report["first"]["url"]
    assert report["second"]["ended"] == [2 * PIECE_SIZE, len(data)]
    assert read_back(system, report["second"]["url"]) == data
