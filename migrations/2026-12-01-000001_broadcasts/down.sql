DROP INDEX t_message_real_time_broadcast_user;
ALTER TABLE t_message_real_time DROP COLUMN broadcast_id;
DROP TABLE broadcast;
ALTER TABLE user_inbox_state DROP COLUMN first_xid;
