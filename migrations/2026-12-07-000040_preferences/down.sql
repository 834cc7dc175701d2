ALTER TABLE broadcast DROP COLUMN skipped;
DROP TABLE user_type_preference;
