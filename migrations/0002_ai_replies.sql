-- AI replies as facts: one row per finished AI reply (completed, or failed), written by the
-- projector with the reply's message row. ai_usage_daily (0001) is the sum of these rows per
-- (user_id, day): the projector adds a reply's row and its counts in one transaction, and
-- `durachat-replay rebuild-room` deletes a room's rows and re-counts the days they were in,
-- so re-projecting one room never counts a reply twice.
-- D1-compatible: plain SQLite DDL, no PRAGMA, no ATTACH.

CREATE TABLE ai_replies (
    room           TEXT NOT NULL,
    reply_id       TEXT NOT NULL,             -- also the id of its message row, if it has one
    user_id        TEXT NOT NULL,             -- who asked: whose usage it is
    outcome        TEXT NOT NULL CHECK (outcome IN ('completed', 'failed')),
    reason         TEXT,                      -- why it failed; NULL when completed
    finished_at    INTEGER NOT NULL,          -- ms since the epoch
    day            TEXT NOT NULL,             -- YYYY-MM-DD (UTC) of finished_at
    requests       INTEGER NOT NULL,          -- 1 when the provider was called, else 0
    prompt_tokens  INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL,
    PRIMARY KEY (room, reply_id)
);
CREATE INDEX ai_replies_by_user_day ON ai_replies (user_id, day);
