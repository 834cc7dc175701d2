-- One row per notification per recipient. `seq` is the recipient's change-stream position at
-- which the row was created; (to_user, seq) is unique and doubles as the keyset for paging.
CREATE TABLE t_message_real_time (
    id          uuid        PRIMARY KEY,
    to_user     text        NOT NULL,
    seq         bigint      NOT NULL,
    title       text        NOT NULL,
    content     text        NOT NULL,
    type        text        NOT NULL,
    send_user   text        NULL,
    send_time   timestamptz NOT NULL,
    skip_url    text        NULL,
    is_read     boolean     NOT NULL DEFAULT false,
    read_at     timestamptz NULL,
    data        jsonb       NULL,
    service     text        NOT NULL,
    deleted_at  timestamptz NULL
);
-- A user's newest messages (keyset on seq, newest first).
CREATE UNIQUE INDEX t_message_real_time_user_seq ON t_message_real_time (to_user, seq);
-- Unread listing / counting and mark-all-read touch only the unread, live rows.
CREATE INDEX t_message_real_time_user_unread ON t_message_real_time (to_user, seq)
    WHERE NOT is_read AND deleted_at IS NULL;

-- Per-user counters, updated in the same transaction as every inbox change. Taking this row
-- (INSERT .. ON CONFLICT DO UPDATE, recipients sorted) is the serialisation point per user:
-- it hands out gap-free seqs and keeps unread/unseen exact.
CREATE TABLE user_inbox_state (
    user_id     text        PRIMARY KEY,
    seq         bigint      NOT NULL DEFAULT 0,
    unread      bigint      NOT NULL DEFAULT 0,
    unseen      bigint      NOT NULL DEFAULT 0,
    -- messages with seq > seen_seq that are still unread are "unseen"
    seen_seq    bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The retained per-user change stream: one row per event, payload = the exact WebSocket frame.
-- Append-only; pruned by age (NOTIFYD_EVENT_RETENTION) in small batches.
CREATE TABLE user_event (
    user_id     text        NOT NULL,
    seq         bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    payload     jsonb       NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX user_event_created_at ON user_event (created_at);

-- The relay's queue: small rows, deleted once published. User events point into user_event
-- (no second copy of the payload); topic events carry their payload here.
CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    user_id     text        NULL,
    seq         bigint      NULL,
    topic       text        NULL,
    payload     jsonb       NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((user_id IS NOT NULL AND seq IS NOT NULL) OR (topic IS NOT NULL AND payload IS NOT NULL))
);

-- Idempotency-Key per calling service, kept 24 h.
CREATE TABLE idempotency_key (
    service       text        NOT NULL,
    key           text        NOT NULL,
    request_hash  text        NOT NULL,
    response      jsonb       NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, key)
);
CREATE INDEX idempotency_key_created_at ON idempotency_key (created_at);
