-- A topic's retained ("last") value: the frame of its latest event published with
-- `"retain": true`, written in the same transaction as that event's outbox row. Sent to a
-- session right after it subscribes. Rows past `expires_at` are ignored and pruned.
CREATE TABLE topic_retained (
    topic       text        PRIMARY KEY,
    id          text        NOT NULL,
    frame       jsonb       NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX topic_retained_expires_at ON topic_retained (expires_at);
