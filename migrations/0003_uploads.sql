-- Uploads and message attachments. `uploads` is projected from the upload objects' stream
-- (EVT_UPLOAD): one row per upload, its state as it goes (receiving, stored, complete,
-- rejected, expired, deleted) and its Gemini copy's state once handed off. A message's
-- attachments are rows of `message_attachments` in their order; the upload's row may come
-- later than the message's (two streams), so readers join and may find none yet.
-- D1-compatible: plain SQLite DDL, no PRAGMA, no ATTACH.

CREATE TABLE uploads (
    id            TEXT PRIMARY KEY,           -- 64 hex: /api/uploads/<id>
    owner         TEXT,                       -- verified user id; NULL: anonymous
    room          TEXT,
    name          TEXT NOT NULL,
    type          TEXT NOT NULL,              -- MIME type
    size          INTEGER NOT NULL,           -- bytes declared (Upload-Length)
    received      INTEGER NOT NULL DEFAULT 0, -- bytes accepted so far
    state         TEXT NOT NULL,
    gemini_state  TEXT,                       -- NULL: not handed to Gemini
    sha256        TEXT,                       -- of the whole file, once complete
    reason        TEXT,                       -- why it was rejected
    created_at    INTEGER NOT NULL,           -- ms since the epoch
    updated_at    INTEGER NOT NULL
);
CREATE INDEX uploads_by_room ON uploads (room, created_at);
CREATE INDEX uploads_by_owner ON uploads (owner, created_at);

CREATE TABLE message_attachments (
    room        TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    position    INTEGER NOT NULL,             -- 0-based order on the message
    upload_id   TEXT NOT NULL,
    timestamp   INTEGER NOT NULL,             -- the message's, for keyset pages
    PRIMARY KEY (room, message_id, position)
);
CREATE INDEX message_attachments_by_time ON message_attachments (room, timestamp);
