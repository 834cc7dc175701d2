#!/usr/bin/env bash
# Redis Cluster (issue 25 item 3, contract §11), against clusters of its own on free ports
# under a temporary directory, stopped and removed at the end, of Debian's redis-server 7
# (`redis-cli --cluster create ... --cluster-replicas 1`, three masters and three replicas),
# with a short `cluster-node-timeout` so a killed master's replica takes over in a few seconds:
#   1. a plain one: tests/api/redis_cluster.rs runs against it (ignored by plain cargo test: it
#      needs the cluster): two notifyd nodes with REDIS_URL=redis+cluster://...; user and topic
#      events across the nodes, presence, then `kill -9` of a Redis master under load (the test
#      kills the process whose pid file it is given): 0 lost / 0 duplicated / 0 reordered user
#      events per client, the topic events lost during the failover counted and printed; and a
#      keyless slot moved between the masters 40 times while 256 publishers use the node's
#      command connection (each publish must get through: it is moved back at the end);
#   2. a TLS-only one (`port 0`, `tls-port`, `tls-cluster yes`, `tls-replication yes`: clients,
#      replication and the cluster bus all over TLS), its nodes' certificate from a CA made here
#      (openssl; it names `localhost` and `127.0.0.1`, the address the nodes announce), created
#      with `redis-cli --tls`: tests/api/redis_tls_cluster.rs runs the same delivery and
#      master-kill tests with REDIS_URL=rediss+cluster://localhost:... and the CA in
#      NOTIFYD_REDIS_CA_FILE, and checks that another CA (or none) stops start-up with the reason;
#   3. a TLS-only one of three masters whose certificate names `localhost` only: start-up must
#      refuse it too (the client reaches every master at 127.0.0.1).
# Called by scripts/test.sh; runs alone too (after scripts/services.sh). About 80 s after the
# build (the TLS clusters ~50 s of it). Set NOTIFYD_KEEP_CLUSTER=1 to print the clusters' seeds
# and leave them running until Enter is pressed (for running the tests by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/servers.sh
say_tag=redis-cluster
export TEST_DATABASE_ADMIN_URL=${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}

work=$(mktemp -d /tmp/notifyd-redis-cluster.XXXXXX)
cleanup() {
  set +e
  for pidfile in "$work"/*/*/redis.pid; do kill_pidfile "$pidfile"; done
  sleep 0.2
  rm -rf "$work"
}
trap cleanup EXIT

# start_cluster DIR plain|tls REPLICAS: three masters with REPLICAS (0 or 1) replicas each, on
# free ports, each node in DIR/<port>/ (its pid file, log, nodes.conf: the tests find the nodes
# there); returns once every replica finished its first sync. With `tls`, the nodes listen on a
# TLS port only and talk to each other over TLS too, with DIR/node.pem and DIR/ca.pem (made
# with servers.sh's make_ca and make_cert); clients are not asked for a certificate (notifyd has
# none to give). Sets `seeds` to the first three nodes (`127.0.0.1:p1,...`, or `localhost:p1,...`
# for TLS: the name the certificate carries).
start_cluster() {
  local dir=$1 tls=$2 replicas=$3 p host=127.0.0.1
  local ports=() nodes=() listen=() cli=(redis-cli -h 127.0.0.1)
  mkdir -p "$dir"
  if [ "$tls" = tls ]; then
    host=localhost
    cli+=(--tls --cacert "$dir/ca.pem")
  fi
  for _ in $(seq 1 $((3 * (1 + replicas)))); do
    p=$(free_cluster_port)
    ports+=("$p")
    mkdir -p "$dir/$p"
    if [ "$tls" = tls ]; then
      # The bus (port + 10000) needs client certificates of its peers: node.pem is for both ends.
      listen=(--port 0 --tls-port "$p" --tls-cluster yes --tls-replication yes
        --tls-cert-file "$dir/node.pem" --tls-key-file "$dir/node.key"
        --tls-ca-cert-file "$dir/ca.pem" --tls-auth-clients no)
    else
      listen=(--port "$p")
    fi
    redis-server "${listen[@]}" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$dir/$p/nodes.conf" --cluster-node-timeout 2000 \
      --save "" --appendonly no --repl-diskless-sync-delay 0 --daemonize yes --dir "$dir/$p" \
      --pidfile "$dir/$p/redis.pid" --logfile "$dir/$p/redis.log"
  done
  for p in "${ports[@]}"; do
    wait_for "redis-server :$p" "${cli[@]}" -p "$p" ping || { tail -n 5 "$dir/$p/redis.log" >&2; return 1; }
  done
  for p in "${ports[@]}"; do nodes+=("127.0.0.1:$p"); done
  "${cli[@]}" --cluster create "${nodes[@]}" --cluster-replicas "$replicas" --cluster-yes >"$dir/create.log"
  cluster_ok() {
    for p in "${ports[@]}"; do
      "${cli[@]}" -p "$p" cluster info | grep -q 'cluster_state:ok' || return 1
    done
  }
  wait_for "the cluster in $dir" cluster_ok
  # `cluster_state:ok` comes before the replicas' first sync is done; a replica that never synced
  # cannot take over, so the master-kill test would wait for a failover that never comes.
  replicas_synced() {
    local up=0
    for p in "${ports[@]}"; do
      "${cli[@]}" -p "$p" info replication | tr -d '\r' | grep -q '^master_link_status:up' && up=$((up + 1))
    done
    [ "$up" -eq $((3 * replicas)) ]
  }
  wait_for "the replicas' first sync in $dir" replicas_synced
  seeds=$(IFS=,; echo "${ports[*]:0:3}" | sed "s/[0-9]\+/$host:&/g")
  say "$(redis-server --version | cut -d' ' -f1-3) ($tls): 3 masters + $((3 * replicas)) replicas on ${nodes[*]}"
}

# --- 1. the plain cluster ---
start_cluster "$work/plain" plain 1
plain_seeds=$seeds

# --- 2. the TLS-only cluster ---
# node.pem names localhost (the seeds notifyd is given) and 127.0.0.1 (the address the nodes
# announce in CLUSTER SLOTS, which the client connects to and checks the certificate against).
mkdir -p "$work/tls"
make_ca "$work/tls" ca "notifyd test cluster CA"
make_ca "$work/tls" wrong-ca "another CA"
make_cert "$work/tls" node ca "DNS:localhost,IP:127.0.0.1" serverAuth,clientAuth
start_cluster "$work/tls" tls 1
tls_seeds=$seeds

# --- 3. a TLS-only cluster whose certificate names `localhost` only ---
# The seeds answer by that name, but the nodes announce 127.0.0.1, which the certificate does not
# carry: a misconfiguration start-up must refuse with the reason. Masters only (it is never
# failed over).
mkdir -p "$work/tls-misnamed"
cp "$work/tls/ca.pem" "$work/tls/ca.key" "$work/tls-misnamed/"
make_cert "$work/tls-misnamed" node ca DNS:localhost serverAuth,clientAuth
start_cluster "$work/tls-misnamed" tls 0
misnamed_seeds=$seeds

export NOTIFYD_TEST_REDIS_CLUSTER="$plain_seeds"
export NOTIFYD_TEST_REDIS_CLUSTER_DIR="$work/plain"
export NOTIFYD_TEST_REDIS_TLS_CLUSTER="$tls_seeds"
export NOTIFYD_TEST_REDIS_TLS_CLUSTER_DIR="$work/tls"
export NOTIFYD_TEST_REDIS_TLS_CLUSTER_CA="$work/tls/ca.pem"
export NOTIFYD_TEST_REDIS_TLS_CLUSTER_WRONG_CA="$work/tls/wrong-ca.pem"
export NOTIFYD_TEST_REDIS_TLS_CLUSTER_MISNAMED="$misnamed_seeds"
if [ "${NOTIFYD_KEEP_CLUSTER:-}" = 1 ]; then
  env | grep '^NOTIFYD_TEST_REDIS' | sort | sed 's/^/  /' >&2
  say "the clusters run until Enter is pressed"
  read -r _
  exit 0
fi
cargo test --test api redis_cluster:: -- --ignored --test-threads 1 --nocapture
cargo test --test api redis_tls_cluster:: -- --ignored --test-threads 1 --nocapture
