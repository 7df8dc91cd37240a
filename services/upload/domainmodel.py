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


class StaleEpoch(OffsetMismatch):
    """A range from a writer a newer one has fenced."""


def upload_aggregate_id(upload_id: str) -> UUID:
    return uuid5(UPLOAD_NAMESPACE, upload_id)


class Upload(Aggregate):
    """One upload: who, where, how long, which bytes are stored, how it ended."""

    epoch = 0  # the write epoch of the last accepted range (objects from before epochs: 0)

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
        # accepted ranges: [offset, length, first_seq, last_seq, sha256 hex, epoch], in order
        # (ranges recorded before epochs have no sixth item: epoch 0)
        self.ranges: list[list[int | str]] = []
        self.sha256: str | None = None
        self.chunks = 0
        self.reason: str | None = None
        self._no_gemini_copy(generation=0)

    def _no_gemini_copy(self, generation: int) -> None:
        # the Gemini Files API copy (generation n is file dc-<id>-<n>)
        self.gemini_generation = generation
        self.gemini_state: str | None = None  # uploading | PROCESSING | ACTIVE | FAILED
        self.gemini_file: str | None = None
        self.gemini_upload_url: str | None = None
        self.gemini_received = 0
        self.gemini_uri: str | None = None
        self.gemini_expires_at: float | None = None
        self.gemini_poll_at: float | None = None
        self.gemini_polls = 0
        self.gemini_reason: str | None = None
        self.gemini_started_at: float | None = None  # when this generation's hand-off began

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
        now: float, ttl: float, epoch: int = 0,
    ) -> bool:
        """Record bytes [offset, offset+length) as stored in the pieces of write epoch
        `epoch` among first_seq..last_seq. False (nothing recorded) for a range already
        recorded."""
        self._check_open()
        if offset + length <= self.offset and last_seq <= self.last_seq:
            return False  # a retry, or a stale writer reporting pieces found since
        if epoch < self.epoch:
            raise StaleEpoch(f"Write epoch {epoch} is older than {self.epoch}: a newer request writes this upload.")
        if offset != self.offset:
            raise OffsetMismatch(f"The range starts at {offset}, the upload is at {self.offset}.")
        if offset + length > self.length:
            raise OffsetMismatch(f"The range ends past the upload's length {self.length}.")
        if first_seq <= self.last_seq or last_seq < first_seq:
            raise OffsetMismatch(f"Pieces {first_seq}..{last_seq} do not follow {self.last_seq}.")
        self._range_accepted(
            offset=offset, length=length, first_seq=first_seq, last_seq=last_seq, sha256=sha256,
            expires_at=now + ttl, epoch=epoch,
        )
        return True

    @event("RangeAccepted")
    def _range_accepted(
        self, offset: int, length: int, first_seq: int, last_seq: int, sha256: str,
        expires_at: float, epoch: int = 0,  # stored RangeAccepted events without it: 0
    ) -> None:
        self.ranges.append([offset, length, first_seq, last_seq, sha256, epoch])
        self.offset = offset + length
        self.last_seq = last_seq
        self.epoch = epoch
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

    # --- the Gemini Files API copy --------------------------------------------------------

    def _check_complete(self) -> None:
        self._check_open()
        if self.status != "complete":
            raise OffsetMismatch("The upload is not complete: nothing to hand to Gemini yet.")

    def hand_off_started(self, file_id: str, upload_url: str, now: float | None = None) -> None:
        self._check_complete()
        if self.gemini_file == file_id and self.gemini_upload_url == upload_url:
            return
        self._hand_off_started(file_id=file_id, upload_url=upload_url, at=now)

    @event("HandOffStarted")
    def _hand_off_started(self, file_id: str, upload_url: str, at: float | None = None) -> None:
        # `at`: stored HandOffStarted events without it decode as None
        self.gemini_started_at = at
        self.gemini_state = "uploading"
        self.gemini_file = file_id
        self.gemini_upload_url = upload_url
        self.gemini_received = 0

    def hand_off_progress(self, received: int) -> None:
        self._check_complete()
        if self.gemini_state == "uploading" and received > self.gemini_received:
            self._hand_off_progress(received=received)

    @event("HandOffProgress")
    def _hand_off_progress(self, received: int) -> None:
        self.gemini_received = received

    def gemini_reported(
        self, file_id: str, state: str, uri: str, expires_at: float | None, reason: str | None,
        now: float, poll_every: float, max_polls: int,
    ) -> None:
        """What Gemini says of the copy (after the last chunk, or a poll). PROCESSING sets
        the next poll as the object's alarm; past `max_polls` it counts as FAILED."""
        self._check_complete()
        polls = self.gemini_polls
        poll_at = None
        if state == "PROCESSING":
            if polls >= max_polls:
                state, reason = "FAILED", f"Gemini was still processing the file after {polls} checks."
            else:
                poll_at = now + poll_every
        if (state, uri, expires_at, poll_at) == (self.gemini_state, self.gemini_uri,
                                                 self.gemini_expires_at, self.gemini_poll_at):
            return
        self._gemini_checked(file_id=file_id, state=state, uri=uri, expires_at=expires_at,
                             reason=reason, poll_at=poll_at)

    @event("GeminiChecked")
    def _gemini_checked(
        self, file_id: str, state: str, uri: str, expires_at: float | None, reason: str | None,
        poll_at: float | None,
    ) -> None:
        self.gemini_file = file_id
        self.gemini_state = state
        self.gemini_uri = uri or None
        self.gemini_expires_at = expires_at
        self.gemini_reason = reason
        self.gemini_poll_at = poll_at
        if state == "ACTIVE":
            self.gemini_upload_url = None

    def poll_due(self, at: float, now: float) -> bool:
        if self.gemini_state != "PROCESSING" or self.gemini_poll_at is None:
            return False
        if at < self.gemini_poll_at or now < self.gemini_poll_at:
            return False
        self._gemini_poll_due()
        return True

    @event("GeminiPollDue")
    def _gemini_poll_due(self) -> None:
        self.gemini_poll_at = None
        self.gemini_polls += 1

    def hand_off_failed(self, reason: str) -> None:
        self._check_complete()
        self._hand_off_failed(reason=reason)

    @event("HandOffFailed")
    def _hand_off_failed(self, reason: str) -> None:
        self.gemini_state = "FAILED"
        self.gemini_reason = reason
        self.gemini_poll_at = None

    def need_gemini_copy(self, now: float, lost: bool = False, margin: float = 60.0) -> bool:
        """A question needs the Gemini copy: if there is none usable (never made, failed,
        past its expiry, or `lost`: Gemini said it has none), start again with the next
        generation. True if it did."""
        self._check_complete()
        state = self.gemini_state
        if state in ("uploading", "PROCESSING"):
            return False  # on its way
        usable = self.gemini_expires_at is None or self.gemini_expires_at > now + margin
        if state == "ACTIVE" and usable and not lost:
            return False
        self._gemini_copy_lost(generation=self.gemini_generation + 1)
        return True

    @event("GeminiCopyLost")
    def _gemini_copy_lost(self, generation: int) -> None:
        self._no_gemini_copy(generation)

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
