#!/usr/bin/env bash
# The long chaos run quoted in docs/reliability.md: 200 users (1-3 WebSocket clients each) and
# 20,000 messages at 100/s through nginx and three `notifyd serve` nodes, with every fault
# (node kill -9, relay leader kill -9, Redis restart, PostgreSQL restart, TCP drop, slow client,
# half-open Redis, half-open PostgreSQL)
# repeated until the producer is done. The harness runs its own PostgreSQL, Redis and nginx on
# free ports; the shared servers are not touched.
#
#   scripts/chaos-long.sh                      # report in target/chaos-long.md
#   CHAOS_MESSAGES=50000 CHAOS_RATE=200 scripts/chaos-long.sh
#   CHAOS_RELEASE=1 scripts/chaos-long.sh      # nodes built in release mode
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh   # installs PostgreSQL, Redis and nginx when they are missing
export CHAOS_LONG=1
export CHAOS_REPORT=${CHAOS_REPORT:-$PWD/target/chaos-long.md}
profile=()
if [ "${CHAOS_RELEASE:-}" = 1 ]; then profile=(--release); fi
cargo test "${profile[@]}" --test chaos -- --ignored --nocapture
echo "report: $CHAOS_REPORT"
