DROP INDEX t_message_real_time_user_snoozed;
DROP INDEX t_message_real_time_user_archived;
DROP INDEX t_message_real_time_snoozed_until;
ALTER TABLE t_message_real_time DROP COLUMN arrived_seq;
ALTER TABLE t_message_real_time DROP COLUMN snoozed_until;
ALTER TABLE t_message_real_time DROP COLUMN archived_at;
