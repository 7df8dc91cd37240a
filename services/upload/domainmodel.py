"""The Upload aggregate: one upload's decisions, as events. Pure domain: no NATS, no I/O.

The bytes are in the object store bucket (services/upload/store.py); the aggregate records
which ranges of the upload's piece chain it accepted, when the whole file was checked and
finished, and why anything was refused. It is the one writer's view of the upload: the
runtime runs its commands one at a time, so there are no locks and a HEAD never waits for
a PATCH.
"""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

UPLOAD_NAMESPACE = uuid5(NAMESPACE_URL, "durachat:upload")


class UploadError(Exception):
    """A refusal of the upload; str() says why."""


class UploadExists(UploadError):
    pass


class NoSuchUpload(UploadError):
    pass


class UploadGone(UploadError):
    pass


class OffsetMismatch(UploadError):
    pass


def upload_aggregate_id(upload_id: str) -> UUID:
    return uuid5(UPLOAD_NAMESPACE, upload_id)


class Upload(Aggregate):
    """One upload: who, where, how long, which bytes are stored, how it ended."""

    @staticmethod
    def create_id(upload_id: str, **_: object) -> UUID:
        return upload_aggregate_id(upload_id)

    @event("Created")
    def __init__(
        self,
        upload_id: str,
        command_id: str,
        owner: str | None,
        room: str | None,
        length: int,
        mime: str,
        name: str,
        metadata: dict[str, str],
        created_at: float,
        expires_at: float,
    ) -> None:
        self.upload_id = upload_id
        self.command_id = command_id
        self.owner = owner
        self.room = room
        self.length = length
        self.mime = mime
        self.name = name
        self.metadata = dict(metadata)
        self.created_at = created_at
        self.expires_at: float | None = expires_at
        self.status = "stored" if length == 0 else "receiving"
        self.offset = 0
        self.last_seq = 0
        # accepted ranges: [offset, length, first_seq, last_seq, sha256 hex], in order
        self.ranges: list[list[int | str]] = []
        self.sha256: str | None = None
        self.chunks = 0
        self.reason: str | None = None

    @property
    def gone(self) -> bool:
        return self.status in ("rejected", "expired", "deleted")

    def _check_open(self) -> None:
        if self.gone:
            raise UploadGone(self.gone_reason())

    def gone_reason(self) -> str:
        if self.status == "rejected":
            return f"The upload was rejected: {self.reason}"
        if self.status == "expired":
            return "The upload expired before it was finished."
        return "The upload was deleted."

    # --- bytes ------------------------------------------------------------------------------

    def accept_range(
        self, offset: int, length: int, first_seq: int, last_seq: int, sha256: str,
        now: float, ttl: float,
    ) -> bool:
        """Record bytes [offset, offset+length) as stored in pieces first_seq..last_seq.
        False (nothing recorded) for a range already recorded."""
        self._check_open()
        if offset + length <= self.offset and last_seq <= self.last_seq:
            return False  # a retry, or a stale writer reporting pieces found since
        if offset != self.offset:
            raise OffsetMismatch(f"The range starts at {offset}, the upload is at {self.offset}.")
        if offset + length > self.length:
            raise OffsetMismatch(f"The range ends past the upload's length {self.length}.")
        if first_seq <= self.last_seq or last_seq < first_seq:
            raise OffsetMismatch(f"Pieces {first_seq}..{last_seq} do not follow {self.last_seq}.")
        self._range_accepted(
            offset=offset, length=length, first_seq=first_seq, last_seq=last_seq, sha256=sha256,
            expires_at=now + ttl,
        )
        return True

    @event("RangeAccepted")
    def _range_accepted(
        self, offset: int, length: int, first_seq: int, last_seq: int, sha256: str,
        expires_at: float,
    ) -> None:
        self.ranges.append([offset, length, first_seq, last_seq, sha256])
        self.offset = offset + length
        self.last_seq = last_seq
        self.expires_at = expires_at
        if self.offset == self.length:
            self.status = "stored"

    def complete(self, sha256: str, chunks: int) -> bool:
        """Every byte was read back and checked; False if it was already complete."""
        self._check_open()
        if self.status == "complete":
            return False
        if self.status != "stored":
            raise OffsetMismatch(f"The upload holds {self.offset} of {self.length} bytes.")
        self._completed(sha256=sha256, chunks=chunks)
        return True

    @event("Completed")
    def _completed(self, sha256: str, chunks: int) -> None:
        self.status = "complete"
        self.sha256 = sha256
        self.chunks = chunks
        self.expires_at = None

    # --- endings ----------------------------------------------------------------------------

    def reject(self, reason: str) -> bool:
        if self.gone:
            return False
        self._rejected(reason=reason)
        return True

    @event("Rejected")
    def _rejected(self, reason: str) -> None:
        self.status = "rejected"
        self.reason = reason
        self.expires_at = None

    def expire_if_due(self, at: float, now: float) -> bool:
        """The alarm for `at` is due: an unfinished upload past its expiry is expired."""
        if self.status != "receiving" or self.expires_at is None:
            return False
        if at < self.expires_at or now < self.expires_at:
            return False  # an old alarm; the upload moved its expiry since
        self._expired()
        return True

    @event("Expired")
    def _expired(self) -> None:
        self.status = "expired"
        self.expires_at = None

    def terminate(self) -> bool:
        if self.status == "deleted":
            return False
        self._deleted()
        return True

    @event("Deleted")
    def _deleted(self) -> None:
        self.status = "deleted"
        self.expires_at = None
