"""tus 1.0 conformance of `/api/uploads` over real HTTP, against the whole system as processes:
core, creation, creation-with-upload, expiration, checksum, termination, GET with Range, and
every refusal with the status the protocol (or the issue) names and a body that says why."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime

import httpx
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from contracts.upload import (
    PIECE_SIZE,
    GetUpload,
    UploadClient,
    UploadView,
    chunk_subject,
    object_stream,
)
from services.gateway.identity import PLACEHOLDER_SECRET, mint
from services.gateway.uploads import FIRST_PIECE, RECORD_EVERY
from services.localsystem import LocalSystem
from tests.conftest import running
from tests.support import eventually_blocking

pytestmark = pytest.mark.e2e

MAX_SIZE = 32 << 20
TTL = 8  # seconds an unfinished upload lives after its last bytes (a day by default)
TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {"Content-Type": "application/offset+octet-stream"}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    env = {"DURACHAT_UPLOAD_MAX_SIZE": str(MAX_SIZE), "DURACHAT_UPLOAD_TTL": str(TTL)}
    with running(LocalSystem(tmp_path_factory.mktemp("uploads"), extra_env=env)) as local:
        yield local


@pytest.fixture
def client(system: LocalSystem) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=system.base_url, timeout=30) as c:
        yield c


def nats_url(system: LocalSystem) -> str:
    assert system.nats is not None
    return system.nats.url


def metadata(**pairs: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def png(size: int) -> bytes:
    return PNG + os.urandom(size - len(PNG))


def create(client: httpx.Client, length: int, mime: str = "image/png", headers: dict | None = None,
           **kwargs) -> httpx.Response:
    head = {**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata(filename="f.png", filetype=mime)}
    return client.post("/api/uploads", headers={**head, **(headers or {})}, **kwargs)


def new_upload(client: httpx.Client, length: int, **kwargs) -> str:
    response = create(client, length, **kwargs)
    assert response.status_code == 201, response.text
    return response.headers["location"]


def patch(client: httpx.Client, url: str, offset: int, body: bytes, **headers: str) -> httpx.Response:
    return client.patch(url, content=body, headers={**TUS, **STREAM, "Upload-Offset": str(offset), **headers})


def offset_of(client: httpx.Client, url: str) -> int:
    response = client.head(url, headers=TUS)
    assert response.status_code == 200
    return int(response.headers["upload-offset"])


def test_options_advertises_the_extensions_and_limits(client: httpx.Client) -> None:
    response = client.options("/api/uploads")
    assert response.status_code == 204
    h = response.headers
    assert h["tus-version"] == "1.0.0"
    assert set(h["tus-extension"].split(",")) == {
        "creation", "creation-with-upload", "expiration", "checksum", "termination"}
    assert h["tus-max-size"] == str(MAX_SIZE)
    assert h["tus-checksum-algorithm"] == "sha1,sha256"


def test_a_file_in_several_patches_with_head_between(system: LocalSystem, client: httpx.Client) -> None:
    data = png(3 * PIECE_SIZE + 12_345)
    response = create(client, len(data))
    assert response.status_code == 201
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["upload-offset"] == "0"
    url = response.headers["location"]
    assert url.startswith("/api/uploads/") and len(url.rsplit("/", 1)[1]) == 64
    expires = parsedate_to_datetime(response.headers["upload-expires"])  # an RFC 9110 date
    assert 0 < expires.timestamp() - time.time() <= TTL + 1

    cut = 1_500_001
    first = patch(client, url, 0, data[:cut])
    assert first.status_code == 204 and first.headers["upload-offset"] == str(cut)
    assert "upload-expires" in first.headers
    head = client.head(url, headers=TUS)
    assert head.status_code == 200
    assert head.headers["upload-offset"] == str(cut)
    assert head.headers["upload-length"] == str(len(data))
    assert head.headers["cache-control"] == "no-store"
    assert "filetype aW1hZ2UvcG5n" in head.headers["upload-metadata"]
    last = patch(client, url, cut, data[cut:])
    assert last.status_code == 204 and last.headers["upload-offset"] == str(len(data))

    got = client.get(url)
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-type"] == "image/png"
    # Once finished (read back and checked), the digest is the ETag and the file is an
    # ordinary object of the bucket that nats-py reads and verifies.
    sha = hashlib.sha256(data).hexdigest()
    eventually_blocking(lambda: client.get(url, headers={"Range": "bytes=0-0"}).headers.get("etag") == f'"{sha}"')
    assert asyncio.run(read_object(nats_url(system), url.rsplit("/", 1)[1])) == data


def test_one_long_patch_is_recorded_in_several_ranges_each_hashed_right(system: LocalSystem, client: httpx.Client) -> None:
    """A PATCH longer than RECORD_EVERY pieces is recorded range by range while pieces are
    still in flight (each piece hashed as it is sent): the upload object checks each range's
    sha256 against the bytes it reads back before it completes the upload."""
    data = png(FIRST_PIECE + (RECORD_EVERY + 3) * PIECE_SIZE + 99)
    url = create(client, len(data)).headers["location"]
    response = patch(client, url, 0, data)
    assert response.status_code == 204 and response.headers["upload-offset"] == str(len(data))
    sha = hashlib.sha256(data).hexdigest()
    eventually_blocking(lambda: client.get(url, headers={"Range": "bytes=0-0"}).headers.get("etag") == f'"{sha}"',
                        what="the upload completed: every range's sha256 matched")
    view = asyncio.run(upload_view(nats_url(system), url.rsplit("/", 1)[1]))
    assert len(view.ranges) >= 2, view.ranges
    assert client.get(url).content == data


async def upload_view(nats_url: str, upload_id: str) -> UploadView:
    nc = await nats.connect(nats_url)
    try:
        view = await UploadClient(nc, timeout=10).send(upload_id, GetUpload())
        assert isinstance(view, UploadView), view
        return view
    finally:
        await nc.close()


async def read_object(nats_url: str, name: str) -> bytes:
    nc = await nats.connect(nats_url)
    try:
        store = await nc.jetstream().object_store("uploads")
        return (await store.get(name)).data
    finally:
        await nc.close()


def test_get_with_ranges(client: httpx.Client) -> None:
    data = png(2 * PIECE_SIZE + 10)
    url = new_upload(client, len(data))
    assert patch(client, url, 0, data).status_code == 204
    for header, expect in [
        ("bytes=0-9", data[:10]),
        (f"bytes={PIECE_SIZE - 5}-{PIECE_SIZE + 4}", data[PIECE_SIZE - 5 : PIECE_SIZE + 5]),
        (f"bytes={2 * PIECE_SIZE}-", data[2 * PIECE_SIZE :]),
        ("bytes=-7", data[-7:]),
    ]:
        response = client.get(url, headers={"Range": header})
        assert response.status_code == 206, header
        assert response.content == expect, header
        assert response.headers["content-range"].endswith(f"/{len(data)}")
    bad = client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(data)}"
    assert client.get(url, headers={"Range": "bytes=0-1,4-5"}).status_code == 416


def test_creation_with_upload_and_an_empty_file(client: httpx.Client) -> None:
    data = png(5000)
    response = create(client, len(data), headers=STREAM, content=data[:3000])
    assert response.status_code == 201, response.text
    assert response.headers["upload-offset"] == "3000"
    url = response.headers["location"]
    assert patch(client, url, 3000, data[3000:]).status_code == 204
    assert client.get(url).content == data

    empty = create(client, 0, mime="text/plain")
    assert empty.status_code == 201
    assert offset_of(client, empty.headers["location"]) == 0
    assert client.get(empty.headers["location"]).content == b""


def test_checksums(client: httpx.Client) -> None:
    data = png(200_000)
    url = new_upload(client, len(data))
    part = data[:100_000]
    sha1 = base64.b64encode(hashlib.sha1(part).digest()).decode()
    good = patch(client, url, 0, part, **{"Upload-Checksum": f"sha1 {sha1}"})
    assert good.status_code == 204 and good.headers["upload-offset"] == "100000"

    rest = data[100_000:]
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    mismatch = patch(client, url, 100_000, rest, **{"Upload-Checksum": f"sha256 {wrong}"})
    assert mismatch.status_code == 460 and "mismatch" in mismatch.text
    assert offset_of(client, url) == 100_000  # nothing stored
    unsupported = patch(client, url, 100_000, rest, **{"Upload-Checksum": "md5 AAAAAAAAAAAAAAAAAAAAAA=="})
    assert unsupported.status_code == 400 and "md5" in unsupported.text
    assert offset_of(client, url) == 100_000
    sha256 = base64.b64encode(hashlib.sha256(rest).digest()).decode()
    assert patch(client, url, 100_000, rest, **{"Upload-Checksum": f"sha256 {sha256}"}).status_code == 204
    assert client.get(url).content == data


def test_termination(system: LocalSystem, client: httpx.Client) -> None:
    url = new_upload(client, 3000)
    assert patch(client, url, 0, png(1000)).status_code == 204
    assert client.delete(url, headers=TUS).status_code == 204
    for response in (client.head(url, headers=TUS), patch(client, url, 1000, b"x" * 10),
                     client.get(url), client.delete(url, headers=TUS)):
        assert response.status_code == 410
    assert "deleted" in patch(client, url, 1000, b"x").text
    eventually_blocking(lambda: asyncio.run(stored_pieces(nats_url(system), url.rsplit("/", 1)[1])) == 0,
                        what="the deleted upload's pieces purged")


async def stored_pieces(nats_url: str, upload_id: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(object_stream(), subjects_filter=chunk_subject(upload_id))
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


def test_method_override(client: httpx.Client) -> None:
    data = png(100)
    url = new_upload(client, len(data))
    response = client.post(url, content=data, headers={
        **TUS, **STREAM, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"})
    assert response.status_code == 204 and response.headers["upload-offset"] == "100"
    plain = client.post(url, headers=TUS)
    assert plain.status_code == 405


# --- refusals -------------------------------------------------------------------------------


def test_412_for_another_protocol_version(client: httpx.Client) -> None:
    url = new_upload(client, 10)
    for response in (
        client.post("/api/uploads", headers={"Tus-Resumable": "0.2.2", "Upload-Length": "1"}),
        client.head(url, headers={"Tus-Resumable": "2.0.0"}),
        client.patch(url, content=b"x", headers={**STREAM, "Upload-Offset": "0"}),
        client.delete(url),
    ):
        assert response.status_code == 412
        assert response.headers["tus-version"] == "1.0.0"


@pytest.mark.parametrize(
    ("headers", "status", "why"),
    [
        ({}, 400, "Upload-Length"),
        ({"Upload-Length": "-5"}, 400, "Upload-Length"),
        ({"Upload-Length": "12x"}, 400, "Upload-Length"),
        ({"Upload-Defer-Length": "1"}, 400, "Defer"),
        ({"Upload-Length": "10", "Upload-Metadata": "filetype !!"}, 400, "base64"),
        ({"Upload-Length": "10", "Upload-Metadata": "a eA==,a eA=="}, 400, "twice"),
        ({"Upload-Length": str(MAX_SIZE + 1), "Upload-Metadata": metadata(filetype="image/png")}, 413, "Tus-Max-Size"),
        ({"Upload-Length": "10", "Upload-Metadata": metadata(filetype="image/gif")}, 415, "image/gif"),
        ({"Upload-Length": "10", "Upload-Metadata": metadata(filename="x.exe")}, 415, "not accepted"),
        ({"Upload-Length": "10", "Upload-Metadata": metadata(filetype="image/png"),
          "Authorization": "Bearer v1.nonsense.sig"}, 403, "Bad token"),
    ],
)
def test_creation_refusals(client: httpx.Client, headers: dict, status: int, why: str) -> None:
    response = client.post("/api/uploads", headers={**TUS, **headers})
    assert response.status_code == status, response.text
    assert why in response.text


def test_creation_body_must_be_an_offset_stream(client: httpx.Client) -> None:
    response = create(client, 10, headers={"Content-Type": "text/plain"}, content=b"x" * 10)
    assert response.status_code == 415 and "offset+octet-stream" in response.text


def test_patch_refusals(client: httpx.Client) -> None:
    data = png(1000)
    url = new_upload(client, len(data))
    assert patch(client, url, 0, data[:100]).status_code == 204

    wrong_offset = patch(client, url, 50, data[50:60])
    assert wrong_offset.status_code == 409 and "100" in wrong_offset.text
    assert wrong_offset.headers["upload-offset"] == "100"
    no_type = client.patch(url, content=b"x", headers={**TUS, "Upload-Offset": "100"})
    assert no_type.status_code == 415
    no_offset = client.patch(url, content=b"x", headers={**TUS, **STREAM})
    assert no_offset.status_code == 400 and "Upload-Offset" in no_offset.text
    too_long = patch(client, url, 100, b"x" * 901)
    assert too_long.status_code == 413 and "Upload-Length" in too_long.text
    assert offset_of(client, url) == 100  # none of those stored anything

    unknown = "/api/uploads/" + "0" * 64
    assert patch(client, unknown, 0, b"x").status_code == 404
    assert client.head(unknown, headers=TUS).status_code == 404
    assert client.get("/api/uploads/not-an-id").status_code == 404

    assert patch(client, url, 100, data[100:]).status_code == 204
    done = patch(client, url, 1000, b"more")
    assert done.status_code == 413 and "complete" in done.text


def test_unfinished_upload_cannot_be_read(client: httpx.Client) -> None:
    url = new_upload(client, 100)
    response = client.get(url)
    assert response.status_code == 409 and "0 of 100" in response.text


def test_magic_bytes_refuse_a_file_that_is_not_its_type(system: LocalSystem, client: httpx.Client) -> None:
    url = new_upload(client, 1000)  # declared image/png
    response = patch(client, url, 0, b"%PDF-1.7" + b"x" * 992)
    assert response.status_code == 415 and "image/png" in response.text
    assert asyncio.run(stored_pieces(nats_url(system), url.rsplit("/", 1)[1])) == 0  # nothing stored
    later = client.head(url, headers=TUS)
    assert later.status_code == 410
    assert "rejected" in patch(client, url, 0, PNG).text


def test_a_users_upload_is_theirs(client: httpx.Client) -> None:
    alice = {"Authorization": "Bearer " + mint("alice", PLACEHOLDER_SECRET)}
    bob = {"Authorization": "Bearer " + mint("bob", PLACEHOLDER_SECRET)}
    data = png(500)
    url = new_upload(client, len(data), headers=alice)
    assert patch(client, url, 0, data[:100], **bob).status_code == 403
    assert client.head(url, headers={**TUS, **bob}).status_code == 403
    assert patch(client, url, 0, data[:100]).status_code == 403  # anonymous
    assert client.delete(url, headers={**TUS, **bob}).status_code == 403
    assert patch(client, url, 0, data, **alice).status_code == 204
    assert client.get(url, headers=bob).status_code == 403
    assert client.get(url, headers=alice).content == data


def test_a_room_upload_is_readable_by_the_room(client: httpx.Client) -> None:
    alice = {"Authorization": "Bearer " + mint("alice", PLACEHOLDER_SECRET)}
    data = png(300)
    head = {**TUS, **alice, "Upload-Length": str(len(data)),
            "Upload-Metadata": metadata(filename="a.png", filetype="image/png", room="lobby")}
    response = client.post("/api/uploads", headers=head)
    url = response.headers["location"]
    assert patch(client, url, 0, data, **alice).status_code == 204
    assert client.get(url).content == data  # a member: anyone shown the id in the room


def test_an_abandoned_upload_expires_by_its_alarm(system: LocalSystem, client: httpx.Client) -> None:
    url = new_upload(client, 1000)
    response = patch(client, url, 0, png(100))
    assert response.status_code == 204
    expires = parsedate_to_datetime(response.headers["upload-expires"]).timestamp()
    eventually_blocking(lambda: client.head(url, headers=TUS).status_code == 410, timeout=TTL + 15,
                        what="the upload expired")
    assert time.time() >= expires
    gone = patch(client, url, 100, b"x" * 10)
    assert gone.status_code == 410 and "expired" in gone.text
    eventually_blocking(lambda: asyncio.run(stored_pieces(nats_url(system), url.rsplit("/", 1)[1])) == 0,
                        what="the expired upload's pieces purged")


def test_the_replay_cli_shows_an_uploads_state_events_and_export(system: LocalSystem, client: httpx.Client,
                                                                   tmp_path) -> None:
    import json
    import subprocess
    import sys

    data = png(3000)
    url = new_upload(client, len(data))
    assert patch(client, url, 0, data).status_code == 204
    upload_id = url.rsplit("/", 1)[1]
    eventually_blocking(lambda: '"' in client.get(url, headers={"Range": "bytes=0-0"}).headers.get("etag", ""))

    def replay(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "services.replay", "--nats", nats_url(system), "upload",
                               upload_id, *args], capture_output=True, text=True, timeout=60)

    state = json.loads(replay().stdout)
    assert state["status"] == "complete" and state["length"] == 3000
    assert state["sha256"] == hashlib.sha256(data).hexdigest()
    rows = [json.loads(line) for line in replay("--events").stdout.splitlines()]
    events = [row["event"] for row in rows]
    assert events[0] == "Created" and "RangeAccepted" in events and events[-1] == "Completed"
    created = json.loads(replay("--seq", str(rows[0]["sequence"])).stdout)  # as of its creation
    assert created["status"] == "receiving" and created["offset"] == 0
    out = tmp_path / "upload.jsonl"
    assert replay("--export", str(out)).returncode == 0
    assert len(out.read_text().splitlines()) >= 2
    missing = subprocess.run([sys.executable, "-m", "services.replay", "--nats", nats_url(system), "upload",
                              "0" * 64], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no events" in missing.stderr


def test_a_user_lists_their_uploads(client: httpx.Client) -> None:
    erin = {"Authorization": "Bearer " + mint("erin", PLACEHOLDER_SECRET)}
    url = new_upload(client, 1000, headers=erin)
    assert patch(client, url, 0, png(400), **erin).status_code == 204

    def listed() -> list[dict]:
        response = client.get("/api/uploads", headers=erin)
        assert response.status_code == 200
        return response.json()["uploads"]

    eventually_blocking(lambda: [(u["id"], u["received"]) for u in listed()] == [(url.rsplit("/", 1)[1], 400)],
                        what=lambda: f"erin's uploads: {listed()}")
    assert listed()[0]["state"] == "receiving" and listed()[0]["size"] == 1000
    assert client.get("/api/uploads").status_code == 403  # anonymous: nothing to list
    assert client.get("/api/uploads", headers={**erin}, params={"limit": 0}).status_code == 400


def gateway_samples(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    got = client.get("/metrics")
    assert got.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(got.text) for s in family.samples}


def test_upload_metrics_count_the_traffic(client: httpx.Client) -> None:
    """Bytes and pieces stored, PATCH durations and refusals by status, after known traffic;
    no label names an upload, a room or a user."""
    before = gateway_samples(client)
    data = png(2 * PIECE_SIZE + 10)
    assert FIRST_PIECE < PIECE_SIZE  # so each PATCH below is two pieces: FIRST_PIECE bytes, then the rest
    url = new_upload(client, len(data))
    assert patch(client, url, 0, data[:PIECE_SIZE]).status_code == 204
    assert patch(client, url, 0, b"again").status_code == 409  # the offset moved on
    assert patch(client, url, PIECE_SIZE, data[PIECE_SIZE:]).status_code == 204
    assert client.head(url + "0", headers=TUS).status_code == 404
    after = gateway_samples(client)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("durachat_upload_bytes_total") == len(data)
    assert grew("durachat_upload_pieces_total") == 4
    assert grew("durachat_upload_patch_seconds_count") == 3
    assert grew("durachat_upload_refusals_total", status="409") == 1
    assert grew("durachat_upload_refusals_total", status="404") == 1
    upload_id = url.rsplit("/", 1)[1]
    names = {label for (name, labels) in after if name.startswith("durachat_upload") for label, _ in labels}
    assert names <= {"status", "le"}, names
    assert not any(upload_id in value for (_, labels) in after for _, value in labels)


def test_replay_check_compares_and_rebuild_remakes_the_uploads_table(system: LocalSystem, client: httpx.Client) -> None:
    import sqlite3
    import subprocess
    import sys

    data = png(4000)
    url = new_upload(client, len(data))
    assert patch(client, url, 0, data).status_code == 204
    upload_id = url.rsplit("/", 1)[1]

    def row() -> tuple | None:
        conn = sqlite3.connect(f"file:{system.read_db}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT state, size, sha256 FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        finally:
            conn.close()

    eventually_blocking(lambda: (row() or ("",))[0] == "complete", what="the upload projected as complete")

    def replay(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "services.replay", "--nats", nats_url(system),
                               "--db", str(system.read_db), *args], capture_output=True, text=True, timeout=120)

    healthy = replay("check")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    conn = sqlite3.connect(system.read_db, timeout=10)
    with conn:
        conn.execute("UPDATE uploads SET state = 'rejected' WHERE id = ?", (upload_id,))
    conn.close()
    tampered = replay("check")
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    assert "uploads" in tampered.stdout and "'rejected' / 'complete'" in tampered.stdout, tampered.stdout
    rebuilt = replay("rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert row() == ("complete", len(data), hashlib.sha256(data).hexdigest())
    assert replay("check").returncode == 0
