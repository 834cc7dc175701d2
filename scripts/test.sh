#!/usr/bin/env bash
# The README's second command: the whole test suite, against real PostgreSQL and Redis.
# Lints, unit and integration tests (a fresh database and Redis prefix per test), property tests,
# TLS and PgBouncer against servers of their own (scripts/tls-pooler-test.sh), a streaming read
# replica (scripts/replica-test.sh), a Redis Cluster of its own with a master killed under load,
# plain and TLS-only (scripts/redis-cluster-test.sh),
# the chaos run, schemathesis against the served OpenAPI document, browser tests in headless Chromium, then the public conformance suite
# (../shared/conformance) against a release build when it is present.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export TEST_DATABASE_ADMIN_URL=${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}

echo "== vendored crates: the upstream .crate + patches/*.diff, nothing else (scripts/vendor.sh)"
scripts/vendor.sh check
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
# Not --all-targets: that would also run benches/load.rs, which measures, it does not test.
cargo test --lib --bins --tests -- --test-threads "${TEST_THREADS:-4}"
echo "== TLS to PostgreSQL and Redis, and PgBouncer in transaction mode (servers of its own)"
scripts/tls-pooler-test.sh
echo "== read replicas: a primary and a streaming replica of its own (pg_basebackup -R)"
scripts/replica-test.sh
echo "== Redis Cluster: sharded pub/sub, presence, a master killed under load (clusters of its own, plain and TLS)"
scripts/redis-cluster-test.sh
echo "== the chaos runs (tests/chaos: ignored by plain cargo test, run here): the default run, then a Redis Cluster master killed (~2.5 min)"
# scripts/services.sh above installed what they need (nginx, the PostgreSQL server binaries,
# redis-server and redis-cli). The two runs take turns (a lock in the harness).
cargo test --test chaos -- --ignored

echo "== schemathesis against /api-docs/openapi.json (a live node, service key and user token)"
scripts/schemathesis.sh

echo "== browser tests (headless Chromium)"
scripts/browser-test.sh

conf=../shared/conformance/run
if [ -x "$conf" ]; then
  echo "== conformance (../shared/conformance)"
  cargo build --release --quiet
  NOTIFYD_BIN=$PWD/target/release/notifyd "$conf"
else
  echo "== conformance suite not found at $conf: skipped"
fi
