-- Read models of durachat, written by the projector from the event streams.
-- D1-compatible: plain SQLite DDL, no PRAGMA, no ATTACH. Applied in file-name order and
-- recorded in d1_migrations, as `wrangler d1 migrations apply` does.

CREATE TABLE rooms (
    name           TEXT PRIMARY KEY,
    private        INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,          -- ms since the epoch
    last_activity  INTEGER NOT NULL,          -- ms since the epoch
    message_count  INTEGER NOT NULL DEFAULT 0,
    expired        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX rooms_by_activity ON rooms (private, last_activity DESC);

CREATE TABLE messages (
    room       TEXT NOT NULL,
    id         TEXT NOT NULL,
    author     TEXT NOT NULL,
    text       TEXT NOT NULL,
    timestamp  INTEGER NOT NULL,              -- ms since the epoch, increasing per room
    kind       TEXT NOT NULL CHECK (kind IN ('user', 'ai', 'system')),
    version    INTEGER NOT NULL,              -- the room's version after this message
    PRIMARY KEY (room, id)
);
CREATE INDEX messages_by_time ON messages (room, timestamp, id);

CREATE TABLE members_seen (
    room        TEXT NOT NULL,
    name        TEXT NOT NULL,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    joins       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room, name)
);

CREATE TABLE ai_usage_daily (
    user_id   TEXT NOT NULL,
    day       TEXT NOT NULL,                  -- YYYY-MM-DD (UTC)
    requests  INTEGER NOT NULL DEFAULT 0,
    tokens    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day)
);

-- Where the projector is in each stream; written in the same transaction as the rows.
CREATE TABLE projector_positions (
    stream    TEXT PRIMARY KEY,
    sequence  INTEGER NOT NULL
);

-- Events the projector could not apply: recorded, reported by `check`, and skipped.
CREATE TABLE dead_letters (
    stream       TEXT NOT NULL,
    sequence     INTEGER NOT NULL,
    event_index  INTEGER NOT NULL,            -- -1: the whole stored commit was unreadable
    subject      TEXT NOT NULL,
    error        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    recorded_at  INTEGER NOT NULL,
    PRIMARY KEY (stream, sequence, event_index)
);
