#!/usr/bin/env bash
# schemathesis (a third-party OpenAPI fuzzer, pinned below) against a live notifyd: the document
# the node serves at /api-docs/openapi.json must agree with what the node does.
#
# Creates a venv under target/ (once per pinned version), starts `notifyd serve` on a free port
# against a fresh PostgreSQL database and its own Redis prefix, then runs `schemathesis run` with
# every check twice: the service API (tag `service`, and the operations routes, tag `ops`) with a
# service key, the user API (tag `user`) with a user JWT. Any failure, or a node that dies, exits
# non-zero. The node is stopped and the database dropped on the way out.
#
# Env: NOTIFYD_BIN (default: build and use target/debug/notifyd), SCHEMATHESIS_EXAMPLES (examples
# per operation and phase, default 25), TEST_DATABASE_ADMIN_URL, TEST_REDIS_URL.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-25}
ADMIN_URL=${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
say() { printf '[schemathesis] %s\n' "$*" >&2; }

# --- the pinned schemathesis, in a venv of its own ---
work=$PWD/target/schemathesis
venv=$work/venv-$SCHEMATHESIS_VERSION
st=$venv/bin/schemathesis
if ! "$st" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  say "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# --- the node ---
if [ -z "${NOTIFYD_BIN:-}" ]; then
  cargo build --quiet
  NOTIFYD_BIN=$PWD/target/debug/notifyd
fi
run_id="st_$(date +%s)_$$"
db_url="${ADMIN_URL%/*}/notifyd_$run_id"
psql_admin() { psql -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "$1" >/dev/null; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
secret=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
key=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
log=$work/notifyd-$run_id.log
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  psql_admin "DROP DATABASE IF EXISTS \"notifyd_$run_id\" WITH (FORCE)" || true
  redis-cli -u "$REDIS_URL" --scan --pattern "$run_id:*" 2>/dev/null | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
}
trap cleanup EXIT
psql_admin "CREATE DATABASE \"notifyd_$run_id\""

env -u NOTIFYD_ALLOWED_ORIGINS -u NOTIFYD_PUBLIC_TOPICS \
  DATABASE_URL="$db_url" REDIS_URL="$REDIS_URL" NOTIFYD_REDIS_PREFIX="$run_id:" \
  NOTIFYD_BIND="127.0.0.1:$port" NOTIFYD_JWT_SECRET="$secret" NOTIFYD_SERVICE_KEYS="schemathesis:$key" \
  NOTIFYD_NODE_ID="$run_id" RUST_LOG=warn \
  "$NOTIFYD_BIN" serve >"$log" 2>&1 &
pid=$!
base=http://127.0.0.1:$port
for _ in $(seq 1 100); do
  curl -fsS "$base/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { say "notifyd exited at start:"; cat "$log" >&2; exit 1; }
  sleep 0.2
done
curl -fsS "$base/readyz" >/dev/null || { say "notifyd not ready on $base"; cat "$log" >&2; exit 1; }
token=$(NOTIFYD_JWT_SECRET="$secret" "$NOTIFYD_BIN" token --user schemathesis-user --ttl 1h --topics '*')

# Every check, bounded examples, one worker (2 cores are shared with the node and the databases).
run() {
  local who=$1; shift
  say "run as $who ($EXAMPLES examples per operation)"
  # From target/schemathesis: its cache (.schemathesis/) goes there, not into the repository.
  (cd "$work" && "$st" run "$base/api-docs/openapi.json" --checks all --workers 1 \
    --max-examples "$EXAMPLES" --seed 1 --no-color "$@")
}
status=0
run "the service key" -H "Authorization: Bearer $key" --include-tag service --include-tag ops || status=1
run "a user token" -H "Authorization: Bearer $token" --include-tag user || status=1
kill -0 "$pid" 2>/dev/null || { say "notifyd died during the run:"; tail -50 "$log" >&2; status=1; }
if [ "$status" = 0 ]; then say "0 failures"; else say "FAILED (node log: $log)"; fi
exit "$status"
