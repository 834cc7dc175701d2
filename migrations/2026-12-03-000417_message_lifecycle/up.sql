-- Message lifecycle (contract §9): the housekeeper finds messages past
-- NOTIFYD_MESSAGE_RETENTION by send time, oldest first, and soft-deleted rows to purge. Both
-- indexes are partial so each holds only the rows its scan wants: live rows by age, and the
-- (few, short-lived) soft-deleted ones.
CREATE INDEX t_message_real_time_live_send_time ON t_message_real_time (send_time)
    WHERE deleted_at IS NULL;
CREATE INDEX t_message_real_time_deleted ON t_message_real_time (deleted_at)
    WHERE deleted_at IS NOT NULL;
