-- A user entry's frame as JSON text, ready to publish. `payload jsonb` made the relay turn each
-- frame back into text (`jsonb_out`), the largest part of its claim's cost per row; the create
-- statement builds the frame as text anyway (store::create_rows), so it is kept as text here.
-- A new nullable column (no table rewrite): entries queued by a version before this one keep
-- their `payload` (or only point at their event) and are relayed as before.
ALTER TABLE outbox ADD COLUMN frame text NULL;
