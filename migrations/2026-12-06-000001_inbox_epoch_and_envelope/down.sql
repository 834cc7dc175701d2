-- Entries queued with an envelope only keep their frame (the text after the header line) for
-- the earlier relay, with writers held off until the column is gone.
LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE;
UPDATE outbox SET frame = substr(envelope, strpos(envelope, E'\n') + 1)
  WHERE envelope IS NOT NULL AND frame IS NULL AND payload IS NULL;
UPDATE outbox SET payload = substr(envelope, strpos(envelope, E'\n') + 1)::jsonb
  WHERE topic IS NOT NULL AND payload IS NULL AND envelope IS NOT NULL;
ALTER TABLE outbox DROP CONSTRAINT outbox_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_check CHECK (
  (user_id IS NOT NULL AND seq IS NOT NULL) OR (topic IS NOT NULL AND payload IS NOT NULL));
ALTER TABLE outbox DROP COLUMN envelope;
ALTER TABLE user_inbox_state DROP COLUMN epoch;
