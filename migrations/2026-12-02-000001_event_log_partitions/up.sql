-- The event log becomes a table partitioned by range of `created_at` (one partition per UTC day
-- by default, NOTIFYD_EVENT_PARTITION_WIDTH), so pruning by age is a DROP of whole partitions:
-- no DELETE, no dead rows, no vacuum, whatever the write rate (docs/architecture.md, "The event
-- log's partitions").
--
-- A unique constraint on a partitioned table must contain the partition key, so there is no
-- (user_id, seq) key on the parent. Each partition has its own PRIMARY KEY (user_id, seq): it
-- serves every read (a user's events after a seq, the relay's lookup of one event) and keeps
-- the pair unique within a partition. Across partitions the pair is unique by construction:
-- seqs are handed out by the user's counter row (user_inbox_state), taken under lock.
--
-- Partitions are named user_event_pYYYYMMDD_HHMMSS after their UTC start. The housekeeper
-- creates them ahead of time (the current one and the next two); the DEFAULT partition takes
-- any row no partition covers (a housekeeper that was down for days), so a write never fails;
-- the housekeeper moves such rows into their own partition, or deletes them once expired
-- (hence its created_at index, which no other partition needs).
--
-- Existing rows are carried over in one INSERT .. SELECT inside this migration's transaction:
-- fine at this project's scale (the log holds days of events); a very large deployment would
-- copy in batches before switching instead.
ALTER TABLE user_event RENAME TO user_event_unpartitioned;
ALTER TABLE user_event_unpartitioned RENAME CONSTRAINT user_event_pkey TO user_event_unpartitioned_pkey;
DROP INDEX user_event_created_at;

CREATE TABLE user_event (
    user_id     text        NOT NULL,
    seq         bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    payload     jsonb       NOT NULL
) PARTITION BY RANGE (created_at);

CREATE TABLE user_event_default PARTITION OF user_event (PRIMARY KEY (user_id, seq)) DEFAULT;
CREATE INDEX user_event_default_created_at ON user_event_default (created_at);

-- One day partition for each UTC day the existing rows fall in.
DO $$
DECLARE
    d timestamptz;
BEGIN
    FOR d IN
        SELECT DISTINCT date_trunc('day', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
        FROM user_event_unpartitioned
    LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF user_event (PRIMARY KEY (user_id, seq)) FOR VALUES FROM (%L) TO (%L)',
            'user_event_p' || to_char(d AT TIME ZONE 'UTC', 'YYYYMMDD"_"HH24MISS'),
            d, d + interval '1 day');
    END LOOP;
END
$$;

INSERT INTO user_event (user_id, seq, created_at, payload)
SELECT user_id, seq, created_at, payload FROM user_event_unpartitioned;
DROP TABLE user_event_unpartitioned;
