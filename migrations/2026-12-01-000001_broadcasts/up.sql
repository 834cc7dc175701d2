-- Announcements to every known user (contract §8).
--
-- Who is "known at that moment": a user whose inbox row (user_inbox_state) was committed before
-- the broadcast was accepted. Each row remembers the transaction that created it (`first_xid`;
-- an upsert's DO UPDATE leaves it alone), and each broadcast keeps the snapshot of the statement
-- that accepted it: a row is a recipient when `pg_visible_in_snapshot(first_xid, snapshot)`.
-- That is exact also for first-time users whose transaction was still running at acceptance
-- (not visible: not a recipient), whatever order they commit in, and costs one function call per
-- row scanned. Rows from before this migration keep NULL (adding the column rewrites nothing)
-- and count as known.
ALTER TABLE user_inbox_state ADD COLUMN first_xid xid8 NULL;
ALTER TABLE user_inbox_state ALTER COLUMN first_xid SET DEFAULT pg_current_xact_id();

-- One row per announcement. The worker creates its notifications in batches of users in
-- user_id order; `cursor_user` is the last user done (NULL: none yet), advanced in the same
-- transaction as the batch's rows, so a crash loses nothing and repeats nothing.
CREATE TABLE broadcast (
    id           uuid        PRIMARY KEY,
    service      text        NOT NULL,
    title        text        NOT NULL,
    content      text        NOT NULL,
    type         text        NOT NULL,
    send_user    text        NULL,
    skip_url     text        NULL,
    data         jsonb       NULL,
    snapshot     pg_snapshot NOT NULL,
    total        bigint      NOT NULL,
    created      bigint      NOT NULL DEFAULT 0,
    cursor_user  text        NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    done_at      timestamptz NULL
);
-- The worker's poll: running broadcasts, oldest first.
CREATE INDEX broadcast_running ON broadcast (created_at) WHERE done_at IS NULL;

-- Which broadcast a notification came from. The partial unique index is the database's own
-- guarantee that no user gets one announcement twice (a repeated batch fails instead).
ALTER TABLE t_message_real_time ADD COLUMN broadcast_id uuid NULL;
CREATE UNIQUE INDEX t_message_real_time_broadcast_user ON t_message_real_time (broadcast_id, to_user)
    WHERE broadcast_id IS NOT NULL;
