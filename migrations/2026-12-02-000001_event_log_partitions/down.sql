-- Back to one plain table, rows carried over.
CREATE TABLE user_event_plain (
    user_id     text        NOT NULL,
    seq         bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    payload     jsonb       NOT NULL,
    PRIMARY KEY (user_id, seq)
);
INSERT INTO user_event_plain SELECT user_id, seq, created_at, payload FROM user_event;
DROP TABLE user_event;
ALTER TABLE user_event_plain RENAME TO user_event;
ALTER TABLE user_event RENAME CONSTRAINT user_event_plain_pkey TO user_event_pkey;
CREATE INDEX user_event_created_at ON user_event (created_at);
