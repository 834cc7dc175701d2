#!/usr/bin/env bash
# Read replicas (issue 25 item 5, contract §11), against servers of its own on free ports under a
# temporary directory, stopped and removed at the end:
#   1. a primary PostgreSQL cluster (initdb) that allows streaming replication from 127.0.0.1;
#   2. a streaming replica of it (`pg_basebackup -R`: a hot standby that follows the primary);
#   3. tests/api/replica.rs against the two (`NOTIFYD_DATABASE_REPLICA_URL`): reads served by a
#      caught-up replica, by the primary while replay is paused (`pg_wal_replay_pause()`), and
#      quickly by the primary while the replica hangs (SIGSTOP) or is shut down, through
#      `replica-ctl stop|start|freeze|thaw`, which this script writes for the tests. They share
#      the one replica, so they run one at a time;
#   4. the first two again with the replica behind a PgBouncer of its own in `pool_mode =
#      transaction` with its default settings (Debian's, installed by scripts/services.sh).
# Called by scripts/test.sh; runs alone too (after scripts/services.sh). About a minute of test
# time after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/servers.sh
say_tag=replica
export TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}

work=$(new_work_dir replica)
pg_bin=$(pg_bin_dir)

cleanup() {
  set +e
  [ -f "$work/frozen" ] && kill -CONT $(cat "$work/frozen") 2>/dev/null
  kill_pidfile "$work/pgbouncer.pid"
  for d in replica primary; do
    [ -f "$work/$d/postmaster.pid" ] && as_pg "$pg_bin/pg_ctl" -D "$work/$d" -m immediate stop >/dev/null 2>&1
  done
  sleep 0.2
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1. the primary ---
primary_port=$(free_port)
as_pg "$pg_bin/initdb" -D "$work/primary" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
cat >>"$work/primary/postgresql.conf" <<CONF
port = $primary_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
wal_level = replica
max_wal_senders = 4
fsync = off
CONF
printf 'local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n' \
  >"$work/primary/pg_hba.conf"
as_pg "$pg_bin/pg_ctl" -D "$work/primary" -l "$work/primary.log" -w start >/dev/null

# --- 2. the replica: a base backup that follows the primary (-R: standby.signal, primary_conninfo) ---
replica_port=$(free_port)
as_pg "$pg_bin/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$work/replica" \
  -R -X stream --checkpoint=fast
cat >>"$work/replica/postgresql.conf" <<CONF
port = $replica_port
hot_standby = on
CONF
as_pg "$pg_bin/pg_ctl" -D "$work/replica" -l "$work/replica.log" -w start >/dev/null
recovering=$(psql -At "postgres://postgres@127.0.0.1:$replica_port/postgres" -c 'SELECT pg_is_in_recovery()')
[ "$recovering" = t ] || { say "the replica is not in recovery"; exit 1; }
say "primary on 127.0.0.1:$primary_port, streaming replica on 127.0.0.1:$replica_port"

# What the tests do to the replica. `freeze` stops the postmaster and every backend with SIGSTOP
# (connections stay open, nothing answers: a hung server); `thaw` continues them.
cat >"$work/replica-ctl" <<CTL
#!/usr/bin/env bash
set -euo pipefail
as_pg() { if [ "\$(id -u)" = 0 ]; then runuser -u postgres -- "\$@"; else "\$@"; fi; }
case "\$1" in
  stop) as_pg "$pg_bin/pg_ctl" -D "$work/replica" -m immediate stop >/dev/null ;;
  start) as_pg "$pg_bin/pg_ctl" -D "$work/replica" -l "$work/replica.log" -w start >/dev/null ;;
  freeze)
    pm=\$(head -n1 "$work/replica/postmaster.pid")
    echo "\$pm \$(ps -o pid= --ppid "\$pm" | tr '\n' ' ')" >"$work/frozen"
    kill -STOP \$(cat "$work/frozen") ;;
  thaw) kill -CONT \$(cat "$work/frozen"); rm -f "$work/frozen" ;;
  *) echo "usage: \$0 stop|start|freeze|thaw" >&2; exit 2 ;;
esac
CTL
chmod 755 "$work/replica-ctl"

# --- 3. the tests ---
export TEST_REPLICA_PRIMARY_URL="postgres://postgres@127.0.0.1:$primary_port/postgres"
export TEST_REPLICA_URL="postgres://postgres@127.0.0.1:$replica_port"
export TEST_REPLICA_CTL="$work/replica-ctl"
cargo test --test api replica:: -- --ignored --test-threads 1 --nocapture

# --- 4. the replica behind PgBouncer in transaction mode ---
pgb_port=$(free_port)
start_transaction_pgbouncer "$work" "$pgb_port" 127.0.0.1 "$replica_port"
say "PgBouncer (transaction mode) in front of the replica on 127.0.0.1:$pgb_port"
TEST_REPLICA_POOLER_URL="postgres://postgres@127.0.0.1:$pgb_port" \
  cargo test --test api -- --ignored --test-threads 1 --nocapture \
  replica::history_and_changes_come_from_a_caught_up_replica \
  replica::with_replay_paused_new_messages_are_still_listed_and_counts_and_commands_stay_exact
# The nodes' replica reads really went through the pooler (it logs each login).
logins=$(pgbouncer_test_logins "$work")
if [ "${logins:-0}" -lt 2 ]; then
  say "only ${logins:-0} test connections logged in through PgBouncer: the tests did not use it"; exit 1
fi
say "$logins replica connections logged in through PgBouncer"
