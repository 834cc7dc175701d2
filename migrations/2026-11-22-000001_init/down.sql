DROP TABLE idempotency_key;
DROP TABLE outbox;
DROP TABLE user_event;
DROP TABLE user_inbox_state;
DROP TABLE t_message_real_time;
