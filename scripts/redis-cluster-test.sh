#!/usr/bin/env bash
# Redis Cluster (issue 25 item 3, contract §11), against a cluster of its own on free ports under
# a temporary directory, stopped and removed at the end: three masters and three replicas of
# Debian's redis-server 7 (`redis-cli --cluster create ... --cluster-replicas 1`), with a short
# `cluster-node-timeout` so a killed master's replica takes over in a few seconds.
# tests/api/redis_cluster.rs runs against it (ignored by plain cargo test: it needs the cluster):
# two notifyd nodes with REDIS_URL=redis+cluster://...; user and topic events across the nodes,
# presence, then `kill -9` of a Redis master under load (the test kills the process whose pid
# file it is given): 0 lost / 0 duplicated / 0 reordered user events per client, the topic
# events lost during the failover counted and printed.
# Called by scripts/test.sh; runs alone too (after scripts/services.sh). Under a minute of test
# time after the build. Set NOTIFYD_KEEP_CLUSTER=1 to print the seeds and leave it running until
# Enter is pressed (for running the tests by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
export TEST_DATABASE_ADMIN_URL=${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
say() { printf '[redis-cluster] %s\n' "$*" >&2; }

work=$(mktemp -d /tmp/notifyd-redis-cluster.XXXXXX)
ports=()
cleanup() {
  set +e
  for p in "${ports[@]}"; do
    [ -f "$work/$p/redis.pid" ] && kill "$(cat "$work/$p/redis.pid")" 2>/dev/null
  done
  sleep 0.2
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  # A cluster node also listens on port + 10000 (the cluster bus): both must be free.
  python3 -c '
import socket
while True:
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    if p + 10000 > 65535: a.close(); continue
    try:
        b = socket.socket(); b.bind(("127.0.0.1", p + 10000)); b.close(); a.close(); print(p); break
    except OSError:
        a.close()'
}
wait_for() { # description, command...
  local what=$1; shift
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  say "$what did not come up"; return 1
}

for _ in 1 2 3 4 5 6; do
  p=$(free_port)
  ports+=("$p")
  mkdir -p "$work/$p"
  redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file "$work/$p/nodes.conf" --cluster-node-timeout 2000 \
    --save "" --appendonly no --repl-diskless-sync-delay 0 --daemonize yes --dir "$work/$p" \
    --pidfile "$work/$p/redis.pid" --logfile "$work/$p/redis.log"
done
for p in "${ports[@]}"; do wait_for "redis-server :$p" redis-cli -p "$p" ping; done
nodes=()
for p in "${ports[@]}"; do nodes+=("127.0.0.1:$p"); done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$work/create.log"
cluster_ok() {
  for p in "${ports[@]}"; do
    redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' || return 1
  done
}
wait_for "the cluster" cluster_ok
# `cluster_state:ok` comes before the replicas' first sync is done; a replica that never synced
# cannot take over, so the master-kill test would wait for a failover that never comes.
replicas_synced() {
  local up=0
  for p in "${ports[@]}"; do
    redis-cli -p "$p" info replication | tr -d '\r' | grep -q '^master_link_status:up' && up=$((up + 1))
  done
  [ "$up" -eq 3 ]
}
wait_for "the replicas' first sync" replicas_synced
seeds=$(IFS=,; echo "${nodes[*]:0:3}")
say "$(redis-server --version | cut -d' ' -f1-3): 3 masters + 3 replicas on ${nodes[*]}"

export NOTIFYD_TEST_REDIS_CLUSTER="$seeds"
export NOTIFYD_TEST_REDIS_CLUSTER_DIR="$work"
if [ "${NOTIFYD_KEEP_CLUSTER:-}" = 1 ]; then
  say "NOTIFYD_TEST_REDIS_CLUSTER=$seeds NOTIFYD_TEST_REDIS_CLUSTER_DIR=$work (Enter stops it)"
  read -r _
  exit 0
fi
cargo test --test api redis_cluster:: -- --ignored --test-threads 1 --nocapture
