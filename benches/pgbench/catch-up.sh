#!/usr/bin/env bash
# What a catch-up statement costs PostgreSQL by how many users it reads (issue 22 item 8;
# docs/decisions/0020, "catch-up batches gather"). SQL-level only: the schema comes from
# migrations/*/up.sql (plus the three day partitions a node creates ahead), the statement is
# store::events::resume_many's (RESUME_MANY_SQL), its users bound as one array as the batcher
# binds them.
#
#   benches/pgbench/catch-up.sh [sizes]    # default sizes: "5 50"
#
# 15,000 users with 4 events each (all in today's partition), every user resuming from seq 1
# (3 events to replay). Per size, `pgbench -n -M prepared -c 1` for PGBENCH_SECS, with
# PostgreSQL's plan_cache_mode at auto (what the nodes get) and at force_custom_plan. Prints
# "users mode tps ms_per_statement us_per_user".
#
# env: PG_ADMIN (postgres://postgres@127.0.0.1:5432), PGBENCH_SECS (5)
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=${1:-5 50}
admin=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432}
secs=${PGBENCH_SECS:-5}
db="catchup_$$"
dir=$(mktemp -d)
trap 'psql -Atq "$admin/postgres" -c "DROP DATABASE IF EXISTS $db" > /dev/null; rm -rf "$dir"' EXIT
psql -Atq "$admin/postgres" -c "CREATE DATABASE $db" > /dev/null
for m in migrations/*/up.sql; do
  psql -q -v ON_ERROR_STOP=1 -1 -f "$m" "$admin/$db" > /dev/null
done
psql -q -v ON_ERROR_STOP=1 "$admin/$db" > /dev/null <<'SQL'
DO $$
DECLARE d date;
BEGIN
  FOR i IN 0..2 LOOP
    d := current_date + i;
    EXECUTE format('CREATE TABLE %I PARTITION OF user_event (PRIMARY KEY (user_id, seq)) FOR VALUES FROM (%L) TO (%L)',
                   'user_event_bench_' || to_char(d, 'YYYYMMDD'), d, d + 1);
  END LOOP;
END $$;
INSERT INTO user_inbox_state (user_id, seq, unread, unseen, seen_seq)
  SELECT 's' || i, 4, 4, 4, 0 FROM generate_series(0, 14999) i;
INSERT INTO user_event (user_id, seq, created_at, payload)
  SELECT 's' || i, s, now(),
         jsonb_build_object('type', 'message', 'seq', s, 'message',
           jsonb_build_object('id', gen_random_uuid(), 'title', 'hello', 'content', 'x',
                              'type', 'note', 'created_at', now()))
  FROM generate_series(0, 14999) i, generate_series(1, 4) s;
ANALYZE;
SQL
# The statement as store/events.rs builds it: its five pieces joined around the binds.
stmt=$(python3 - <<'PY'
import re
src = open("src/store/events.rs").read()
body = re.search(r"const RESUME_MANY_SQL: \[&str; 5\] = \[(.*?)\];", src, re.S).group(1)
parts = [re.sub(r"\\\n\s*", "", p) for p in re.findall(r'"((?:[^"\\]|\\.)*)"', body, re.S)]
print("{0}USERS{1}SINCE{2}1000{3}1001{4}".format(*parts))
PY
)
echo "users mode tps ms_per_statement us_per_user"
for k in $sizes; do
  users=$(seq 0 $((k - 1)) | sed "s/.*/'s'||(:u+&)/" | paste -sd,)
  since=$(seq "$k" | sed 's/.*/1/' | paste -sd,)
  script="$dir/cu$k.sql"
  printf '\\set u random(0, %d)\n' $((14999 - k)) > "$script"
  echo "${stmt/USERS/ARRAY[$users]}" | sed "s/SINCE/ARRAY[$since]/" >> "$script"
  for mode in auto force_custom_plan; do
    tps=$(PGOPTIONS="-c plan_cache_mode=$mode" pgbench -n -M prepared -c 1 -T "$secs" -f "$script" "$admin/$db" 2>/dev/null \
      | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    python3 -c "t=float('$tps'); print($k, '$mode', round(t), round(1000/t, 3), round(1e6/t/$k))"
  done
done
