#!/usr/bin/env bash
# The handler's create statement against the minimal transaction (minimal-batch-100.sql), both
# for 100-message batches, alternated, each run on a fresh scratch database: migrated by notifyd,
# the 5,000 recipients' counters present, CHECKPOINT, then `pgbench -M prepared`. Prints tps.
#   benches/pgbench/compare.sh [rounds]
# env: NOTIFYD_BIN, CARGO_TARGET_DIR, PG_ADMIN, PGBENCH_CLIENTS (8), PGBENCH_SECS (20)
# Needs a release build (the load bench writes the handler's script: BENCH_PGBENCH_SCRIPTS).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
target=${CARGO_TARGET_DIR:-target}
bin=${NOTIFYD_BIN:-$target/release/notifyd}
admin=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432}
clients=${PGBENCH_CLIENTS:-8}
secs=${PGBENCH_SECS:-20}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# The newest load bench binary (older builds may be there too).
load=$(find "$target"/release/deps -maxdepth 1 -type f -executable -name 'load-*' -printf '%T@ %p\n' |
  sort -n | tail -n 1 | cut -d' ' -f2-)
[ -n "$load" ] || { echo "no load bench binary: cargo bench --bench load --no-run" >&2; exit 1; }
BENCH_PGBENCH_SCRIPTS="$dir" "$load" --bench > /dev/null
cp benches/pgbench/minimal-batch-100.sql "$dir/"
secret=pgbench-compare-secret-0123456789abcdef
for round in $(seq 1 "$rounds"); do
  for s in handler-batch-100 minimal-batch-100; do
    db="pgbench_compare_$$_${round}_${s//-/_}"
    psql -q "$admin/postgres" -c "CREATE DATABASE $db"
    DATABASE_URL="$admin/$db" NOTIFYD_JWT_SECRET=$secret NOTIFYD_SERVICE_KEYS=bench:$secret \
      RUST_LOG=warn "$bin" migrate > /dev/null
    psql -q "$admin/$db" -c "INSERT INTO user_inbox_state (user_id) SELECT 'p' || g FROM generate_series(0, 4999) g" -c "CHECKPOINT"
    tps=$(pgbench -n -M prepared -c "$clients" -j 2 -T "$secs" -f "$dir/$s.sql" "$admin/$db" 2>&1 |
      awk '/^tps/ {print $3}')
    echo "$round $s $tps tps (load $(cut -d' ' -f1 /proc/loadavg))"
    psql -q "$admin/postgres" -c "DROP DATABASE $db"
  done
done
