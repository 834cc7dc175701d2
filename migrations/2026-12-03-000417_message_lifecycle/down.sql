DROP INDEX IF EXISTS t_message_real_time_deleted;
DROP INDEX IF EXISTS t_message_real_time_live_send_time;
