#!/usr/bin/env bash
# The one command that regenerates docs/benchmarks.md (and docs/bench-latency.{csv,svg}): a
# release build, then every bench in turn, each on the same machine in this one run:
#   load    (benches/load.rs)   write path vs pgbench, relay vs redis-benchmark, memory per socket
#                               and after a burst, announcements
#   fanout  (benches/fanout.rs) 10,000-socket topic fan-out vs a trivial ceiling server
#   peers   (benches/peers.rs)  notifyd vs the Socket.IO peer and NATS: memory, latency, fan-out
#   storm   (benches/storm.rs)  reconnect storm, when that bench exists
#   eventlog (benches/eventlog.rs) the event log's size under steady writes (simulated days, ~4 min)
# Needs PostgreSQL and Redis (scripts/services.sh starts them), node/npm and pip for the peers.
# BENCH_ONLY="peers fanout" runs only those benches (a space-separated list).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export TEST_DATABASE_ADMIN_URL=${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
only=${BENCH_ONLY:-load fanout peers storm eventlog}
wants() { [[ " $only " == *" $1 "* ]]; }

cargo build --release

doc=docs/benchmarks.md
if wants load; then
  echo "== load"
  # Every scenario rewrites only its own section of the page.
  BENCH_WS_CONNS=${BENCH_WS_CONNS:-5000} cargo bench --bench load
fi
if wants fanout; then
  echo "== fanout"
  BENCH_FANOUT_CONNS=10000 BENCH_FANOUT_LABEL=current cargo bench --bench fanout
fi
if wants peers; then
  echo "== peers"
  cargo bench --bench peers
fi
if wants storm && [ -f benches/storm.rs ]; then
  echo "== storm"
  BENCH_STORM_CLIENTS=15000 BENCH_STORM_LABEL=current cargo bench --bench storm
fi
if wants eventlog; then
  echo "== eventlog"
  cargo bench --bench eventlog
fi
echo "docs/benchmarks.md regenerated"
