#!/usr/bin/env bash
# Measures what one message costs PostgreSQL and Redis, for docs/sizing.md: WAL bytes, rows
# written and transactions per message, and Redis commands per message, on a fresh database with
# one node (`serve --dev`, relay inside). Prints a markdown table; docs/sizing.md quotes a run.
#   NOTIFYD_BIN=target/release/notifyd scripts/sizing-probe.sh
# The counters are the database's and Redis's own (pg_stat_database, pg_current_wal_lsn,
# INFO commandstats), read before and after; autovacuum and the housekeeper may add a little.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${NOTIFYD_BIN:-target/release/notifyd}
ADMIN=${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
DB=sizing_probe_$$
BASE=${ADMIN%/*}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
USERS=${SIZING_USERS:-1000}
BATCHES=${SIZING_BATCHES:-100}     # batches of 100 messages, each to 100 distinct users
SINGLES=${SIZING_SINGLES:-2000}    # single-message POSTs

psql -q "$ADMIN" -c "CREATE DATABASE $DB" >/dev/null
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; psql -q "$ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null; }
trap cleanup EXIT
export DATABASE_URL=$BASE/$DB REDIS_URL=$REDIS NOTIFYD_REDIS_PREFIX="sizing$$:" NOTIFYD_BIND=127.0.0.1:$PORT RUST_LOG=warn
"$BIN" serve --dev >/tmp/sizing-probe-$$.log 2>&1 & PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done

pg() { psql -qAtX "$DATABASE_URL" -c "$1"; }
snap() {
  pg "SELECT pg_current_wal_lsn(), xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database WHERE datname = current_database()"
  redis-cli -u "$REDIS" INFO commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_(publish|spublish)/ {p+=$3} /^cmdstat_/ {c+=$3} END {print c+0 "|" p+0}'
}
post() { curl -sf -o /dev/null -X POST "http://127.0.0.1:$PORT/api/v1/messages" -H 'Authorization: Bearer dev' -H 'Content-Type: application/json' -d "$1"; }
drained() { for _ in $(seq 600); do [ "$(pg 'SELECT count(*) FROM outbox')" = 0 ] && return; sleep 0.1; done; }
body_batch() { python3 - "$1" "$USERS" <<'PY'
import json, sys
b, users = int(sys.argv[1]), int(sys.argv[2])
print(json.dumps({"messages": [{"to_user": f"u{(b*100+i) % users}", "title": "Build finished", "content": "x"*200, "type": "ci", "skip_url": "/builds/1"} for i in range(100)]}))
PY
}
measure() { # name count -- runs the load in "$@" and prints a row
  local name=$1 n=$2; shift 2
  sleep 2; pg CHECKPOINT >/dev/null
  local a b; a=$(snap | paste -sd'|'); "$@"; drained; sleep 1; b=$(snap | paste -sd'|')
  python3 - "$name" "$n" "$a" "$b" "$DATABASE_URL" <<'PY'
import sys, subprocess
name, n, a, b, url = sys.argv[1], int(sys.argv[2]), sys.argv[3].split('|'), sys.argv[4].split('|'), sys.argv[5]
wal = int(subprocess.check_output(["psql","-qAtX",url,"-c",f"SELECT pg_wal_lsn_diff('{b[0]}','{a[0]}')"]).strip())
d = [int(b[i]) - int(a[i]) for i in range(1, 7)]
print(f"| {name} | {n} | {wal/n:,.0f} B | {d[0]/n:.2f} | {d[1]/n:.2f} | {d[2]/n:.2f} | {d[3]/n:.2f} | {d[4]/n:.2f} | {d[5]/n:.2f} |")
PY
}
batches() { for b in $(seq 0 $((BATCHES-1))); do post "$(body_batch "$b")"; done; }
singles() { for i in $(seq 1 "$SINGLES"); do post "{\"to_user\":\"u$((i % USERS))\",\"title\":\"Build finished\",\"content\":\"$(printf 'x%.0s' $(seq 200))\",\"type\":\"ci\",\"skip_url\":\"/builds/1\"}"; done; }

# Warm up: every user's counter row exists, as in steady service.
for b in $(seq 0 $((USERS/100 - 1))); do post "$(body_batch "$b")"; done; drained

echo "Run on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short=9 HEAD), $BIN; $(psql --version); $(redis-server --version | cut -d' ' -f1-3)."
echo
echo "| load | messages | WAL per message | transactions | rows inserted | rows updated | rows deleted | Redis commands | of which PUBLISH |"
echo "|---|---|---|---|---|---|---|---|---|"
measure "100-message batches to distinct users, nobody connected" $((BATCHES*100)) batches
measure "single-message POSTs, nobody connected" "$SINGLES" singles

# The gateway's audit: every NOTIFYD_AUDIT_INTERVAL each node reads the seq of every user
# connected to it, 1,000 per statement (store::inbox_state::seqs). Its cost per connected user,
# from pgbench running that statement shape over 1,000,000 counter rows, on 1 client.
pg "CREATE TABLE audit_probe (LIKE user_inbox_state INCLUDING ALL)"
pg "INSERT INTO audit_probe (user_id, seq, unread, unseen, seen_seq, updated_at, epoch) SELECT 'user-' || md5(g::text), g, 0, 0, 0, now(), 1 FROM generate_series(1, 1000000) g"
pg "VACUUM ANALYZE audit_probe"
cat > /tmp/sizing-audit-$$.sql <<'SQL'
\set s random(1, 999000)
SELECT user_id, seq, epoch FROM audit_probe WHERE user_id = ANY(ARRAY(SELECT 'user-' || md5(g::text) FROM generate_series(:s, :s + 999) g));
SQL
tps=$(pgbench -n -c 1 -T 10 -f /tmp/sizing-audit-$$.sql "$DATABASE_URL" 2>/dev/null | awk '/^tps/ {print $3}')
rm -f /tmp/sizing-audit-$$.sql
echo
echo "Audit read (1,000 users per statement over 1,000,000 counter rows, pgbench, 1 client): $tps statements/s = $(python3 -c "print(f'{float(\"$tps\")*1000:,.0f}')") users/s on one backend."
