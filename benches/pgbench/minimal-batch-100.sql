-- The smallest transaction the contract needs for a batch of 100 messages to 100 users, as
-- one statement for `pgbench -n -M prepared -f` (issue 22 item 8): each recipient's counters
-- upserted (seq, unread, unseen), the message rows, a small event-log row per message (which
-- message it was: its frame can be rebuilt from the message row) and an outbox row per message
-- (user and seq, no frame: the relay would read the frame from the event log or the row).
-- No frame text is written, once or twice. The same recipients, message fields and client
-- counts as the handler's own statement under pgbench (benches/load.rs: `pgbench_script(100)`,
-- written out by `BENCH_PGBENCH_SCRIPTS=<dir>`), so the two compare: the ratio of their
-- transactions per second is what writing each frame (twice, today) costs the database.
-- benches/pgbench/compare.sh runs both; figures in docs/decisions/0004-outbox-frames-as-text.md.
-- It also leaves out the preferences and pending pushes the handler's statement decides:
-- benches/pgbench/frames.sh measures it beside the handler's statement with one frame copy and
-- with none (docs/decisions/0018-frames-written-twice.md).
\set u random(1, 5000)
WITH r AS (
  SELECT g, 'p' || ((:u + 31 * g) % 5000) AS to_user, gen_random_uuid() AS id
  FROM generate_series(1, 100) g
), c AS (
  INSERT INTO user_inbox_state AS s (user_id, seq, unread, unseen)
  SELECT to_user, 1, 1, 1 FROM r ORDER BY to_user
  ON CONFLICT (user_id) DO UPDATE SET seq = s.seq + excluded.seq,
    unread = s.unread + excluded.unread, unseen = s.unseen + excluded.unseen, updated_at = now()
  RETURNING user_id, seq, unread, unseen
), w AS MATERIALIZED (
  SELECT r.g, r.id, r.to_user, c.seq, c.unread, c.unseen FROM r JOIN c ON c.user_id = r.to_user
), m AS (
  INSERT INTO t_message_real_time
    (id, to_user, seq, title, content, type, send_user, send_time, skip_url, data, service, broadcast_id)
  SELECT id, to_user, seq, 'bench', repeat('x', 100), 'bench', NULL, now(), NULL, NULL, 'pgbench', NULL
  FROM w
), ev AS (
  INSERT INTO user_event (user_id, seq, payload)
  SELECT to_user, seq, jsonb_build_object('message', id) FROM w
), o AS (
  INSERT INTO outbox (user_id, seq) SELECT to_user, seq FROM w ORDER BY g
)
SELECT seq, unread, unseen FROM w ORDER BY g;
