#!/usr/bin/env bash
# The one command that regenerates docs/benchmarks.md (and docs/bench-latency.{csv,svg}): a
# release build, then every bench in turn, each on the same machine in this one run:
#   load    (benches/load.rs)   write path vs pgbench, relay vs redis-benchmark, memory per socket
#                               and after a burst, announcements
#   fanout  (benches/fanout.rs) 10,000-socket topic fan-out vs a trivial ceiling server
#   peers   (benches/peers.rs)  notifyd vs the Socket.IO peer and NATS: memory, latency, fan-out
#   storm   (benches/storm.rs)  reconnect storm: default settings all at once, as the shipped
#                               client comes back (0-500 ms), with a service listener, and with
#                               services keeping 64 POSTs in flight (closed loop) on either listener
#   eventlog (benches/eventlog.rs) the event log's size under steady writes (simulated days, ~4 min)
#   sse     (benches/sse.rs)    SSE beside the WebSocket: RSS per idle connection, send→frame latency
#   push    (benches/push.rs)   Web Push: pushes/s to a local endpoint vs a plain client's ceiling,
#                               push delay, create rate with vs without push subscriptions
# Needs PostgreSQL and Redis (scripts/services.sh starts them), node/npm and pip for the peers.
# BENCH_ONLY="peers fanout" runs only those benches (a space-separated list).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export TEST_DATABASE_ADMIN_URL=${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
only=${BENCH_ONLY:-load fanout peers storm eventlog sse push}
wants() { [[ " $only " == *" $1 "* ]]; }

cargo build --release

# Issue 10's table at the top of the page is composed from rows the benches of THIS run leave
# here (benches/support: summary_rows), so it can hold no figure of an earlier run.
export BENCH_SUMMARY_DIR="$PWD/target/bench-summary"
rm -rf "$BENCH_SUMMARY_DIR"
mkdir -p "$BENCH_SUMMARY_DIR"
started="$(date -u '+%Y-%m-%d %H:%M UTC')"
# What counts as code for +dirty: the same list the benches' git_commit() reads.
# shellcheck disable=SC2046
commit="$(git rev-parse --short=9 HEAD)$(git diff --quiet HEAD -- $(cat benches/support/code-paths) || echo +dirty)"
failed=""
# A bench that fails is reported and the others still run; the run then exits non-zero.
step() {
  local name=$1
  shift
  echo "== $name"
  if ! "$@"; then
    echo "!! $name failed"
    failed="$failed $name"
  fi
}

doc=docs/benchmarks.md
# Every scenario rewrites only its own section of the page.
wants load && step load env BENCH_WS_CONNS="${BENCH_WS_CONNS:-5000}" cargo bench --bench load
wants fanout && step fanout env BENCH_FANOUT_CONNS=10000 BENCH_FANOUT_LABEL=current cargo bench --bench fanout
wants peers && step peers cargo bench --bench peers
wants storm && step storm env BENCH_STORM_CLIENTS=15000 BENCH_STORM_LABEL=current cargo bench --bench storm
# The same storm as the shipped JS client comes back: its first retry after a healthy socket
# breaks waits a delay uniform in [0, backoffBaseMs = 500 ms).
wants storm && step storm-spread env BENCH_STORM_CLIENTS=15000 BENCH_STORM_LABEL=client-spread BENCH_STORM_SPREAD_MS=500 cargo bench --bench storm
# The same storm with internal services on a listener of their own (NOTIFYD_SERVICE_BIND).
wants storm && step storm-service env BENCH_STORM_CLIENTS=15000 BENCH_STORM_LABEL=service-listener BENCH_STORM_SERVICE_LISTENER=1 cargo bench --bench storm
# Issue 22 item 8: services keep 64 POSTs in flight (closed loop) through the storm, on the
# public listener and on a service listener; goal: POST p99 ≤ 3× before, everyone back ≤ 3 s.
wants storm && step storm-closed env BENCH_STORM_CLIENTS=15000 BENCH_STORM_LABEL=closed-loop BENCH_STORM_INFLIGHT=64 cargo bench --bench storm
wants storm && step storm-closed-service env BENCH_STORM_CLIENTS=15000 BENCH_STORM_LABEL=closed-loop-service BENCH_STORM_INFLIGHT=64 BENCH_STORM_SERVICE_LISTENER=1 cargo bench --bench storm
# The same as the issue measured it: the POSTs go to the storm's own users, so each is also
# relayed to a client that is resuming or has resumed on the survivor.
wants storm && step storm-closed-storm-users env BENCH_STORM_CLIENTS=15000 BENCH_STORM_LABEL=closed-loop-storm-users BENCH_STORM_INFLIGHT=64 BENCH_STORM_POST_TO=storm cargo bench --bench storm
# The same with the survivor's database pool at notifyd's default, 16 (the benches' nodes have
# 32): fewer of PostgreSQL's backends run the POSTs at once, and the storm gets more of the
# cores (docs/decisions/0020).
wants storm && step storm-closed-storm-users-pool env BENCH_STORM_CLIENTS=15000 BENCH_STORM_LABEL=closed-loop-storm-users-pool16 BENCH_STORM_INFLIGHT=64 BENCH_STORM_POST_TO=storm BENCH_STORM_POOL=16 cargo bench --bench storm
wants eventlog && step eventlog cargo bench --bench eventlog
wants sse && step sse cargo bench --bench sse
wants push && step push cargo bench --bench push

# The table, only after a full run: a partial one (BENCH_ONLY) leaves it as it was.
if [ -z "${BENCH_ONLY:-}" ]; then
  table="$(mktemp)"
  {
    echo "<!-- summary:begin -->"
    echo "## Issue 10's table (written by the last full run of scripts/bench.sh)"
    echo
    echo "Composed by \`scripts/bench.sh\` from the rows its benches left in one run: started $started,"
    echo "finished $(date -u '+%H:%M UTC'), commit \`$commit\`, $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')),"
    echo "default settings unless a row says otherwise. Each figure was measured beside its reference in that same run; the"
    echo "sections below hold the details. Benches that failed in this run: ${failed:-none}."
    echo
    echo "| figure | notifyd | reference, same run | ratio | goal | met? |"
    echo "|---|---|---|---|---|---|"
    cat "$BENCH_SUMMARY_DIR"/*.md 2>/dev/null || true
    echo "<!-- summary:end -->"
  } > "$table"
  if grep -q '^<!-- summary:begin -->' "$doc"; then
    awk -v f="$table" '
      index($0, "<!-- summary:begin -->") == 1 { while ((getline l < f) > 0) print l; skip = 1; next }
      skip && index($0, "<!-- summary:end -->") == 1 { skip = 0; next }
      !skip { print }' "$doc" > "$doc.new" && mv "$doc.new" "$doc"
  else
    cat "$table" >> "$doc"
  fi
  rm -f "$table"
fi
if [ -n "$failed" ]; then
  echo "docs/benchmarks.md regenerated, except:$failed"
  exit 1
fi
echo "docs/benchmarks.md regenerated"
