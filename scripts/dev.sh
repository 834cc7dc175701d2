#!/usr/bin/env bash
# The README's first command: bring up PostgreSQL and Redis (installing them if absent), create
# and migrate the `notifyd` database, and run `notifyd serve --dev` with its demo at /demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/notifyd}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export NOTIFYD_BIND=${NOTIFYD_BIND:-127.0.0.1:8080}
db=${DATABASE_URL##*/}
admin=${DATABASE_URL%/*}/postgres
if ! psql "$admin" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
  psql "$admin" -qc "CREATE DATABASE \"$db\""
fi
cargo build --release --quiet
./target/release/notifyd migrate
echo
echo "  notifyd (dev mode) on http://$NOTIFYD_BIND  -  demo: http://$NOTIFYD_BIND/demo"
echo "  try:  curl -XPOST http://$NOTIFYD_BIND/api/v1/messages -H 'Authorization: Bearer dev' \\"
echo "          -d '{\"to_user\":\"42\",\"title\":\"Hello\",\"content\":\"from curl\"}'"
echo "  a user token:  ./target/release/notifyd token --dev --user 42"
echo
exec ./target/release/notifyd serve --dev
