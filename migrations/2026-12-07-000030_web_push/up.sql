-- Web Push (contract §10): browsers' push subscriptions, the pushes waiting for their delay,
-- and how far each user's live sessions have acknowledged their events.
CREATE TABLE push_subscription (
  id uuid PRIMARY KEY,
  user_id text NOT NULL,
  endpoint text NOT NULL,
  p256dh text NOT NULL,
  auth text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (user_id, endpoint)
);

-- One row per (event, subscription), written by the create statement in the create's
-- transaction; deleted once pushed, skipped (acknowledged, read, deleted) or given up.
-- `sending_since` marks a push in flight: it is never sent twice (at most once), and one whose
-- node died mid-request is dropped, not repeated.
CREATE TABLE push_pending (
  subscription_id uuid NOT NULL REFERENCES push_subscription (id) ON DELETE CASCADE,
  seq bigint NOT NULL,
  user_id text NOT NULL,
  message_id uuid NOT NULL,
  created_at timestamptz NOT NULL,
  not_before timestamptz,
  attempts int NOT NULL DEFAULT 0,
  sending_since timestamptz,
  PRIMARY KEY (subscription_id, seq)
);
CREATE INDEX push_pending_waiting ON push_pending (created_at) WHERE sending_since IS NULL;
CREATE INDEX push_pending_user ON push_pending (user_id, seq);

-- The highest seq a live session of the user said it handed to the app (`received`).
CREATE TABLE push_received (
  user_id text PRIMARY KEY,
  seq bigint NOT NULL
);
