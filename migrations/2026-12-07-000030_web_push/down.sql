DROP TABLE push_received;
DROP TABLE push_pending;
DROP TABLE push_subscription;
