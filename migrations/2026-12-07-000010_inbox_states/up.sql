-- Inbox states (contract §10): archive, snooze, mark unread. Three nullable columns (adding
-- them rewrites nothing; existing rows read NULL: live, not archived, not snoozed, arrived at
-- their own seq).
--
-- A message counts (in `unread`, and in `unseen` when it arrived after the bell was last
-- opened) while it is live, unread, not archived and not snoozed. `arrived_seq` is the seq at
-- which it last entered the inbox: its create (NULL: `seq`), or the event that unarchived,
-- unsnoozed or marked it unread, so such a message is unseen again until the bell is opened.
ALTER TABLE t_message_real_time ADD COLUMN archived_at timestamptz NULL;
ALTER TABLE t_message_real_time ADD COLUMN snoozed_until timestamptz NULL;
ALTER TABLE t_message_real_time ADD COLUMN arrived_seq bigint NULL;

-- Pending wake-ups: the snooze waker's scan (due rows, soonest first). Only snoozed rows.
CREATE INDEX t_message_real_time_snoozed_until ON t_message_real_time (snoozed_until)
    WHERE snoozed_until IS NOT NULL;
-- `?archived=true` / `?snoozed=true`: a user's archived or snoozed messages, newest first.
CREATE INDEX t_message_real_time_user_archived ON t_message_real_time (to_user, seq)
    WHERE archived_at IS NOT NULL AND deleted_at IS NULL;
CREATE INDEX t_message_real_time_user_snoozed ON t_message_real_time (to_user, seq)
    WHERE snoozed_until IS NOT NULL AND deleted_at IS NULL;
