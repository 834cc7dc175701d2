#!/usr/bin/env bash
# TLS and PgBouncer (issue 25 items 1 and 2, contract §11), against servers of its own on free
# ports under a temporary directory, stopped and removed at the end:
#   1. a CA, a server certificate for `localhost` and a second, unrelated CA (openssl);
#   2. a PostgreSQL cluster (initdb) that accepts TLS only (`hostssl`), a redis-server with a TLS
#      port only; tests/api/tls.rs runs against them (create -> WebSocket over TLS with
#      verify-full, each sslmode, a wrong CA stopping start-up);
#   3. PgBouncer (Debian's, installed by scripts/services.sh) in `pool_mode = transaction` with
#      its default settings in front of the local PostgreSQL; a part of the integration tests
#      (creates, deliveries, commands, resumes, retractions) runs with the nodes' DATABASE_URL
#      through it and NOTIFYD_DATABASE_DIRECT_URL to PostgreSQL (tests/api/helpers/app.rs).
# Called by scripts/test.sh; runs alone too (after scripts/services.sh). About a minute of
# test time after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/servers.sh
say_tag=tls-pooler
export TEST_DATABASE_ADMIN_URL=${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}

work=$(new_work_dir tls-pooler)
pg_bin=$(pg_bin_dir)

cleanup() {
  set +e
  [ -f "$work/pg/postmaster.pid" ] && as_pg "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1
  kill_pidfile "$work/redis.pid"
  kill_pidfile "$work/pgbouncer.pid"
  sleep 0.2
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1. certificates ---
make_ca "$work" ca "notifyd test CA"
make_ca "$work" wrong-ca "another CA"
make_cert "$work" server ca DNS:localhost serverAuth

# --- 2. PostgreSQL with TLS only, Redis with TLS only ---
pg_port=$(free_port)
as_pg "$pg_bin/initdb" -D "$work/pg" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
cat >>"$work/pg/postgresql.conf" <<EOF
port = $pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
ssl = on
ssl_cert_file = '$work/server.pem'
ssl_key_file = '$work/server.key'
fsync = off
EOF
printf 'local all all trust\nhostssl all all 127.0.0.1/32 trust\n' >"$work/pg/pg_hba.conf"
as_pg "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w start >/dev/null

redis_port=$(free_port)
redis-server --port 0 --tls-port "$redis_port" --bind 127.0.0.1 \
  --tls-cert-file "$work/server.pem" --tls-key-file "$work/server.key" \
  --tls-ca-cert-file "$work/ca.pem" --tls-auth-clients no \
  --save "" --appendonly no --daemonize yes --dir "$work" \
  --pidfile "$work/redis.pid" --logfile "$work/redis.log"
wait_for "redis-server (TLS)" redis-cli --tls --cacert "$work/ca.pem" -h localhost -p "$redis_port" ping

say "TLS: PostgreSQL on localhost:$pg_port (hostssl only), Redis on localhost:$redis_port (TLS only)"
TEST_TLS_PG_URL="postgres://postgres@localhost:$pg_port/postgres" \
TEST_TLS_REDIS_URL="rediss://localhost:$redis_port" \
TEST_TLS_CA="$work/ca.pem" TEST_TLS_WRONG_CA="$work/wrong-ca.pem" \
  cargo test --test api tls:: -- --ignored --test-threads 2

# --- 3. PgBouncer, transaction mode, default settings, in front of the local PostgreSQL ---
pgb_port=$(free_port)
pg_host_port=${TEST_DATABASE_ADMIN_URL#*@}
pg_host_port=${pg_host_port%%/*}
start_transaction_pgbouncer "$work" "$pgb_port" "${pg_host_port%:*}" "${pg_host_port##*:}"
say "PgBouncer $("$(pgbouncer_bin)" --version | head -n1) on 127.0.0.1:$pgb_port, pool_mode = transaction"

export TEST_DATABASE_POOLER_URL="postgres://postgres@127.0.0.1:$pgb_port"
cargo test --test api pooler:: -- --ignored --test-threads 2
# Creates (plain and idempotent), deliveries to WebSockets (on one node and across two), commands
# over the socket and REST, resumes (the snapshot read) and gap repair, through the pooler.
cargo test --test api -- --test-threads 2 \
  spine::one_message_commits_row_seq_and_counters \
  spine::idempotency_key_replays_the_first_result_per_service \
  spine::a_batch_that_fails_inside_the_database_leaves_no_trace \
  gateway::two_tabs_of_one_user_both_get_each_event_and_a_read_from_one_reaches_both \
  gateway::events_cross_nodes_sharing_a_database_and_redis_prefix \
  gateway::resume_with_since_replays_the_missed_events_in_one_sync_then_continues_live \
  gateway::since_ahead_of_the_stream_or_more_than_1000_behind_is_a_reset_on_ws_and_rest \
  gateway::a_hole_in_the_published_seqs_is_repaired_from_the_database_in_order_without_duplicates \
  user_api::
# The nodes' requests really went through the pooler (it logs each login).
logins=$(pgbouncer_test_logins "$work")
if [ "${logins:-0}" -lt 10 ]; then
  say "only ${logins:-0} test connections logged in through PgBouncer: the tests did not use it"; exit 1
fi
say "$logins test connections logged in through PgBouncer"
