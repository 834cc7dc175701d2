-- Entries queued with a text frame only would lose it: keep it as jsonb first.
UPDATE outbox SET payload = frame::jsonb WHERE frame IS NOT NULL AND payload IS NULL;
ALTER TABLE outbox DROP COLUMN frame;
