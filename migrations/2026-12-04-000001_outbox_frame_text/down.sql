-- Entries queued with a text frame only would lose it: keep it as jsonb first, with writers
-- held off until the column is gone (an entry committed between the UPDATE and the ALTER would
-- otherwise lose its frame).
LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE;
UPDATE outbox SET payload = frame::jsonb WHERE frame IS NOT NULL AND payload IS NULL;
ALTER TABLE outbox DROP COLUMN frame;
