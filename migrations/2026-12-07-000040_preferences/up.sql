-- Preferences (contract §10): per user and message type, whether it is stored at all (`in_app`)
-- and whether it may be Web-Pushed (`push`). Only the types a user named are rows: the create
-- statement (`store::create_rows`) probes this primary key once per recipient row, and a user
-- with no preferences costs one index probe that finds nothing (docs/decisions/0015).
CREATE TABLE user_type_preference (
  user_id text NOT NULL,
  type text NOT NULL,
  in_app boolean NOT NULL,
  push boolean NOT NULL,
  PRIMARY KEY (user_id, type)
);

-- How many of an announcement's recipients were skipped because they muted its type (its
-- `created` counts only stored notifications).
ALTER TABLE broadcast ADD COLUMN skipped bigint NOT NULL DEFAULT 0;
