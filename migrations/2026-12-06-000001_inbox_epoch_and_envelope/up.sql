-- The inbox epoch: which inbox of a user a seq belongs to. It changes when the inbox is
-- replaced (an erasure deletes the counter row; the next change inserts a new one) or when an
-- operator marks a restored database (`notifyd reset-epochs`), so a seq of an old inbox is
-- never taken for one of the new. Microseconds since 1970 at the row's creation: a new inbox's
-- epoch is above its predecessor's. Rows that exist now read 1 (a constant default needs no
-- table rewrite); 0 is kept for "no inbox" (a user without a counter row).
ALTER TABLE user_inbox_state ADD COLUMN epoch bigint NOT NULL DEFAULT 1;
ALTER TABLE user_inbox_state ALTER COLUMN epoch
  SET DEFAULT (floor(extract(epoch FROM clock_timestamp()) * 1000000))::bigint;

-- An entry's envelope as the relay publishes it: a one-line header (kind, seq, epoch, ...) then
-- the frame (broker::envelope). A new nullable column: a relay of an earlier version reads
-- `frame`/`payload` (or the event log) and never publishes an envelope to a gateway that could
-- not read it; entries those versions queued are published as they were (plain JSON frames,
-- which the gateway still reads).
ALTER TABLE outbox ADD COLUMN envelope text NULL;

-- A topic entry carries its frame in its envelope now (a user entry never needed `payload`).
-- During a rolling upgrade a relay of an earlier version finds no frame in such an entry and
-- skips it: live topic events are at-most-once (contract §8), their retained value is in
-- `topic_retained` either way.
ALTER TABLE outbox DROP CONSTRAINT outbox_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_check CHECK (
  (user_id IS NOT NULL AND seq IS NOT NULL)
  OR (topic IS NOT NULL AND (payload IS NOT NULL OR envelope IS NOT NULL)));
