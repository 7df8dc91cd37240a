"""The Upload aggregate and the upload kind's handlers, without I/O."""

from __future__ import annotations

import dataclasses
import json

import pytest

from contracts.common import ErrorReply
from contracts.upload import CreateUpload, GetUpload, RecordRange, TerminateUpload, UploadView
from services.runtime.eventstore import new_mapper
from services.runtime.kind import DueAlarm
from services.upload.domainmodel import OffsetMismatch, StaleEpoch, Upload, UploadGone
from services.upload.handlers import UploadDeps, upload
from tests.support import ManualClocks

UID = "ab" * 32
SHA = "0" * 64


def new_upload(length: int = 100) -> Upload:
    return Upload(upload_id=UID, command_id="c", owner=None, room=None, length=length, mime="image/png",
                  name="a.png", metadata={}, created_at=0.0, expires_at=10.0)


def test_ranges_are_accepted_in_order_and_retries_change_nothing() -> None:
    u = new_upload()
    assert u.accept_range(0, 40, 1, 2, SHA, now=1, ttl=10)
    assert (u.offset, u.last_seq, u.expires_at) == (40, 2, 11)
    assert not u.accept_range(0, 40, 1, 2, SHA, now=2, ttl=10)  # the same range again
    with pytest.raises(OffsetMismatch, match="starts at 50"):
        u.accept_range(50, 10, 3, 3, SHA, now=2, ttl=10)
    with pytest.raises(OffsetMismatch, match="past"):
        u.accept_range(40, 61, 3, 3, SHA, now=2, ttl=10)
    with pytest.raises(OffsetMismatch, match="follow"):
        u.accept_range(40, 10, 2, 2, SHA, now=2, ttl=10)
    assert u.accept_range(40, 60, 3, 5, SHA, now=3, ttl=10)
    assert u.status == "stored"
    assert u.complete(SHA, 5) and not u.complete(SHA, 5)
    assert u.status == "complete" and u.expires_at is None


def test_expiry_only_when_due_and_unfinished() -> None:
    u = new_upload()
    u.accept_range(0, 10, 1, 1, SHA, now=5, ttl=10)  # expiry moved to 15
    assert not u.expire_if_due(at=10, now=10)  # the old alarm
    assert u.expire_if_due(at=15, now=15)
    with pytest.raises(UploadGone, match="expired"):
        u.accept_range(10, 10, 2, 2, SHA, now=16, ttl=10)


def test_handlers_create_once_and_answer_views() -> None:
    clocks = ManualClocks(wall=1000.0)
    ctx = upload.context(UID, UploadDeps(bucket=None, uploads=None, max_size=1000, ttl=60), clocks.clock)  # type: ignore[arg-type]
    create = CreateUpload(length=10, mime="image/png", name="a.png")
    state, reply = upload.decide(create, None, ctx)
    assert isinstance(reply, UploadView) and reply.expires_at == 1060 and reply.status == "receiving"
    state.collect_events()
    same, again = upload.decide(create, state, ctx)  # a retried create
    assert again == reply
    _, refused = upload.decide(CreateUpload(length=10, mime="image/png"), state, ctx)
    assert isinstance(refused, ErrorReply) and refused.code == "exists"
    _, big = upload.decide(CreateUpload(length=1001, mime="image/png"), None, ctx)
    assert isinstance(big, ErrorReply) and "larger" in big.message
    _, missing = upload.decide(GetUpload(), None, ctx)
    assert isinstance(missing, ErrorReply) and missing.code == "not_found"
    _, wrong = upload.decide(RecordRange(offset=3, length=1, first_seq=1, last_seq=1, sha256=SHA), state, ctx)
    assert isinstance(wrong, ErrorReply) and wrong.code == "mismatch"
    _, deleted = upload.decide(TerminateUpload(), state, ctx)
    assert isinstance(deleted, UploadView) and deleted.status == "deleted"
    state.collect_events()
    _, gone = upload.decide(RecordRange(offset=0, length=1, first_seq=1, last_seq=1, sha256=SHA), state, ctx)
    assert isinstance(gone, ErrorReply) and gone.code == "gone"


def test_alarm_expires_an_abandoned_upload() -> None:
    clocks = ManualClocks(wall=1000.0)
    ctx = upload.context(UID, UploadDeps(bucket=None, uploads=None, ttl=60), clocks.clock)  # type: ignore[arg-type]
    state, view = upload.decide(CreateUpload(length=10, mime="image/png"), None, ctx)
    state.collect_events()
    clocks.wall = 1061
    _, after = upload.decide(DueAlarm(at=1060), state, ctx)
    assert after.status == "expired"
    assert upload.wake_at(state) is None  # type: ignore[misc]


def test_a_range_from_a_fenced_epoch_is_refused() -> None:
    u = new_upload()
    assert u.accept_range(0, 40, 5, 6, SHA, now=1, ttl=10, epoch=4)
    with pytest.raises(StaleEpoch, match="older"):
        u.accept_range(40, 10, 7, 7, SHA, now=2, ttl=10, epoch=3)  # its writer was fenced
    assert u.accept_range(40, 10, 9, 9, SHA, now=2, ttl=10, epoch=8)  # a newer one goes on
    assert (u.offset, u.epoch, u.ranges[-1][5]) == (50, 8, 8)


def test_range_accepted_events_stored_before_epochs_still_decode() -> None:
    mapper = new_mapper()
    u = new_upload()
    u.accept_range(0, 40, 1, 2, SHA, now=1, ttl=10, epoch=7)
    stored = [mapper.to_stored_event(e) for e in u.collect_events()]
    old = json.loads(stored[1].state)
    del old["epoch"]  # a RangeAccepted written before write epochs existed
    stored[1] = dataclasses.replace(stored[1], state=json.dumps(old).encode())
    replayed = None
    for event in (mapper.to_domain_event(s) for s in stored):
        replayed = event.mutate(replayed)
    assert replayed is not None and (replayed.offset, replayed.epoch) == (40, 0)
    assert replayed.ranges == [[0, 40, 1, 2, SHA, 0]]


def test_a_receiving_uploads_view_stays_the_same_size_however_many_ranges_it_has() -> None:
    """Every PATCH's record and every HEAD is answered with the upload's view: listing each
    range there made a PATCH slower the more PATCHes came before it. The ranges are what
    reading the file needs, so the view lists them once every byte is stored."""
    ctx = upload.context(UID, UploadDeps(bucket=None, uploads=None, ttl=60), ManualClocks(wall=1000.0).clock)  # type: ignore[arg-type]
    state, _ = upload.decide(CreateUpload(length=1000, mime="image/png"), None, ctx)
    sizes = []
    for i in range(500):
        state, reply = upload.decide(
            RecordRange(offset=i, length=1, first_seq=i + 1, last_seq=i + 1, sha256=SHA), state, ctx)
        assert isinstance(reply, UploadView) and reply.status == "receiving" and reply.offset == i + 1
        sizes.append(len(reply.model_dump_json()))
    assert sizes[-1] - sizes[0] <= 8, (sizes[0], sizes[-1])  # the digits of offset and last_seq
    state, stored = upload.decide(
        RecordRange(offset=500, length=500, first_seq=501, last_seq=501, sha256=SHA), state, ctx)
    assert isinstance(stored, UploadView) and stored.status == "stored"
    assert stored.ranges == [(i, i + 1) for i in range(501)] and stored.epochs == [0] * 501
